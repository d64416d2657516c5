"""Adds up the JUnit files of one test.sh run and prints one closing line.

Passed and skipped are counted once per run (from rank 0 of MPI runs); failures and errors from
every rank. Exits 1 if anything failed or if no test ran at all.
"""

import glob
import os
import sys
import xml.etree.ElementTree as ET


def counts(path):
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root)
    total = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    for s in suites:
        for k in total:
            total[k] += int(s.get(k, 0))
    return total


def main(out):
    passed = failed = skipped = 0
    for path in sorted(glob.glob(os.path.join(out, "*.xml"))):
        c = counts(path)
        bad = c["failures"] + c["errors"]
        failed += bad
        if path.endswith("unit.xml") or path.endswith("-rank0.xml"):
            passed += c["tests"] - bad - c["skipped"]
            skipped += c["skipped"]
            print(
                f"  {os.path.basename(path)}: {c['tests'] - bad - c['skipped']} passed, "
                f"{bad} failed, {c['skipped']} skipped"
            )
        elif bad:
            print(f"  {os.path.basename(path)}: {bad} failed")
    print(f"total: {passed} passed, {failed} failed, {skipped} skipped")
    return 1 if failed or passed == 0 else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
