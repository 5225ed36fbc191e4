"""bench/peers/peer_common.py: sizes, sweeps and the FLOP formula the PyTorch peer scripts share with
distattn_bench (the values are distattn_bench's: tests/cpu/test_bench_options.cc checks the C++ side)."""
import argparse
import os
import sys
import types
import unittest
from unittest import mock

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "bench", "peers"))

import peer_common  # noqa: E402


def args(minseq, maxseq, stepfactor=2, stepseq=None):
    return argparse.Namespace(minseq=minseq, maxseq=maxseq, stepfactor=stepfactor, stepseq=stepseq)


def fake_torch(durations):
    """A stand-in for torch's CUDA events: the i-th timed interval lasts durations[i] ms."""
    clock = {"t": 0.0, "record": 0}

    class Event:
        def __init__(self, enable_timing=False):
            self.at = None

        def record(self):
            # starts and stops alternate; a stop advances the clock by that interval's duration
            k = clock["record"]
            if k % 2 == 1:
                clock["t"] += durations[k // 2]
            self.at = clock["t"]
            clock["record"] += 1

        def elapsed_time(self, stop):
            return stop.at - self.at

    cuda = types.SimpleNamespace(Event=Event, synchronize=lambda: None)
    return types.SimpleNamespace(cuda=cuda)


class PeerCommonTest(unittest.TestCase):
    def test_cuda_median_ms(self):
        calls = []
        with mock.patch.dict(sys.modules, {"torch": fake_torch([5.0, 1.0, 3.0, 9.0, 2.0])}):
            ms = peer_common.cuda_median_ms(lambda: calls.append(1), iters=5, warmup=2)
        self.assertEqual(ms, 3.0)           # median of 5, 1, 3, 9, 2
        self.assertEqual(len(calls), 2 + 5)  # warm-up calls are made but not timed

    def test_warm_up_for_ms_runs_until_the_time_has_passed(self):
        # Each call takes 3 ms of a fake clock: the first sets batches of ceil(10 / 3) = 4 calls; checks at 3, 15, 27,
        # 39 ms go on, the one at 51 ms stops: 1 + 4 * 4 calls.
        clock = {"t": 0.0}

        def fn():
            clock["t"] += 3.0

        with mock.patch("time.perf_counter", side_effect=lambda: clock["t"] / 1e3):
            calls = peer_common.warm_up_for_ms(fn, 50, sync=lambda: None)
        self.assertEqual(calls, 17)
        self.assertGreaterEqual(clock["t"], 50.0)

    def test_warm_up_for_ms_waits_for_every_rank(self):
        # This rank is done at once (0 ms), but the all-reduce says another rank is not, twice; the agreed first-call
        # time (max over ranks, 25 ms) makes the batches one call each.
        seen = []

        def all_done(flag):
            seen.append(flag)
            return len(seen) > 2

        calls = peer_common.warm_up_for_ms(lambda: None, 0, all_done=all_done, max_over_ranks=lambda x: 25.0,
                                           sync=lambda: None)
        self.assertEqual(calls, 3)
        self.assertEqual(seen, [True, True, True])

    def test_cuda_median_ms_with_warmup_ms(self):
        calls = []
        with mock.patch.dict(sys.modules, {"torch": fake_torch([4.0, 2.0, 6.0])}):
            ms = peer_common.cuda_median_ms(lambda: calls.append(1), iters=3, warmup=1, warmup_ms=1)
        self.assertEqual(ms, 4.0)
        self.assertGreater(len(calls), 1 + 3)  # the time-based warm-up made at least one call of its own

    def test_sizes(self):
        self.assertEqual(peer_common.parse_size("4096", "-b"), 4096)
        self.assertEqual(peer_common.parse_size("2K", "-b"), 2048)
        self.assertEqual(peer_common.parse_size("1m", "-e"), 1 << 20)
        self.assertEqual(peer_common.parse_size(" 3G ", "-e"), 3 << 30)
        for bad in ("", "2X", "-1", "1.5K", "K"):
            with self.assertRaises(SystemExit) as ctx:
                peer_common.parse_size(bad, "-e")
            self.assertIn("'-e'", str(ctx.exception))

    def test_sweeps(self):
        self.assertEqual(peer_common.sweep(args("2K", "16K")), [2048, 4096, 8192, 16384])
        self.assertEqual(peer_common.sweep(args("2K", "12K")), [2048, 4096, 8192])
        self.assertEqual(peer_common.sweep(args("1K", "3K", stepseq="1K")), [1024, 2048, 3072])
        for bad in (args("4K", "2K"), args("0", "2K"), args("1K", "2K", stepfactor=1)):
            with self.assertRaises(SystemExit):
                peer_common.sweep(bad)

    def test_flops(self):
        full = 4.0 * 1 * 4096 * 4096 * 32 * 128
        self.assertEqual(peer_common.flops(1, 4096, 32, 128, False, "fwd"), full)
        self.assertEqual(peer_common.flops(1, 4096, 32, 128, True, "fwd"), full / 2)
        self.assertEqual(peer_common.flops(2, 4096, 32, 128, False, "bwd"), 2 * 2.5 * full)
        self.assertEqual(peer_common.flops(1, 4096, 32, 128, True, "fwdbwd"), 3.5 * full / 2)


if __name__ == "__main__":
    unittest.main()
