"""The tier's secret and the handshake on it (:mod:`hvd_ps.secret`,
:mod:`hvd_ps.authentication`), in process over socket pairs: both sides prove they hold the
secret, a wrong secret fails on the side that checks it, and after the handshake every line is
sealed: a tampered, replayed or foreign line is dropped."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import pytest

from hvd_ps import authentication, messages, secret
from hvd_ps.authentication import Refused

KEY = b"k" * 32


def _pair(endpoint_key: bytes, peer_key: bytes):
    """Run the handshake over a socket pair: (endpoint's channel or error, peer's)."""
    a, b = socket.socketpair()
    out: dict = {}

    def endpoint() -> None:
        # the endpoint's side, as hvd_ps.gate.Gate plays it (without its event loop)
        endpoint, lines = authentication.Endpoint(endpoint_key), messages.Lines(a)
        a.sendall(endpoint.hello())
        try:
            reply, session = endpoint.check(lines.next(5.0))
        except authentication.Refused as err:
            a.sendall(authentication.refusal())
            out["endpoint"] = err
            return
        a.sendall(reply)
        out["endpoint"] = authentication.Channel(a, lines, session)

    t = threading.Thread(target=endpoint)
    t.start()
    try:
        peer = authentication.connect(b, peer_key, 5.0)
    except (OSError, ValueError) as err:
        peer = err
    t.join(10)
    return out["endpoint"], peer


def test_both_sides_holding_the_secret_talk_in_sealed_lines() -> None:
    endpoint, peer = _pair(KEY, KEY)
    peer.send({"join": 1})
    assert endpoint.receive(5.0) == {"join": 1}
    endpoint.send({"ok": True})
    endpoint.send({"live": [1]})
    assert peer.receive(5.0) == {"ok": True} and peer.receive(5.0) == {"live": [1]}


def test_a_peer_without_the_secret_is_refused_and_told_so() -> None:
    endpoint, peer = _pair(KEY, b"x" * 32)
    assert isinstance(endpoint, Refused)
    assert isinstance(peer, Refused) and "HVD_PS_SECRET_FILE" in str(peer)


def test_an_endpoint_without_the_secret_is_not_believed() -> None:
    """A fake roster that answers the peer's proof without the secret is refused."""
    a, b = socket.socketpair()
    a.sendall(authentication.Endpoint(b"y" * 32).hello())
    a.sendall(b'{"proof": "' + b"ab" * 32 + b'"}\n')  # a fake endpoint accepts anything
    with pytest.raises(Refused, match="did not prove that it holds the tier's secret"):
        authentication.connect(b, KEY, 5.0)


def test_sealed_lines_refuse_tampering_replay_and_another_connection() -> None:
    endpoint, peer = _pair(KEY, KEY)
    _, other = _pair(KEY, KEY)
    line = peer.session.seal({"leave": 0})
    mac, _, body = line.partition(b" ")
    with pytest.raises(ValueError):
        endpoint.session.open(mac + b" " + body.replace(b"0", b"1"))  # changed
    with pytest.raises(ValueError):
        endpoint.session.open(other.session.seal({"leave": 0})[:-1])  # another connection's
    assert endpoint.session.open(line[:-1]) == {"leave": 0}
    with pytest.raises(ValueError):
        endpoint.session.open(line[:-1])  # again: its number is spent
    with pytest.raises(ValueError):
        endpoint.session.open(b"not hex {}")
    assert endpoint.session.dropped == 4
    assert endpoint.session.open(peer.session.seal({"live": 1})[:-1]) == {"live": 1}


def test_a_secret_file_is_made_private_and_checked(tmp_path: Path) -> None:
    path = secret.create(str(tmp_path))
    assert os.stat(path).st_mode & 0o777 == 0o600
    key = secret.load(path)
    assert len(key) == 2 * secret.SIZE and key == secret.load(path)
    with pytest.raises(FileExistsError):
        secret.create(str(tmp_path))  # never over an existing file
    os.chmod(path, 0o640)
    with pytest.raises(secret.SecretError, match=r"HVD_PS_SECRET_FILE=.*mode 640.*chmod 600"):
        secret.load(path)
    short = tmp_path / "short"
    short.write_text("abc\n")
    short.chmod(0o600)
    with pytest.raises(secret.SecretError, match=r"--secret-file=.*holds 3 bytes.*16 to 4096"):
        secret.load(str(short), "--secret-file")
    with pytest.raises(secret.SecretError, match="cannot be read"):
        secret.load(str(tmp_path / "missing"))
    with pytest.raises(secret.SecretError, match="not a regular file"):
        secret.load(str(tmp_path))
    held = secret.Held(None)
    assert secret.load(held.path) == held.key
    held.remove()
    assert not os.path.exists(held.path)
