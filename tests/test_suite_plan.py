"""The cluster suite's timed windows: where they start and what they hold."""

import argparse

import pytest

from benchmarks.cluster_suite import warmup_steps


@pytest.mark.parametrize("period", [2, 5, 16])
@pytest.mark.parametrize("warmup", [0, 1, 2, 15, 16, 17])
def test_overlapped_window_starts_an_exchange_and_ends_with_it_applied(period, warmup):
    args = argparse.Namespace(warmup=warmup)
    for tau in range(1, period):
        w = warmup_steps(args, dict(overlap=tau, period=period))
        assert w >= warmup
        window = range(w + 1, w + period + 1)  # steps t counted from 1, one period timed
        launches = [t for t in window if t % period == 0]
        assert launches == [window[0]]  # its first step starts the exchange...
        assert launches[0] + tau <= window[-1]  # ...which is applied inside the window
        assert (window[-1] + 1) % period == 0  # and the next one starts after the job
        assert w - warmup < period  # no more than a period of extra warm-up


def test_blocking_window_keeps_the_warmup_and_holds_one_exchange():
    args = argparse.Namespace(warmup=1)
    w = warmup_steps(args, dict(overlap=0, period=16))
    assert w == 1
    assert [t for t in range(w + 1, w + 17) if t % 16 == 0] == [16]
