"""bench/peers/peer_common.py: sizes, sweeps and the FLOP formula the PyTorch peer scripts share with
distattn_bench (the values are distattn_bench's: tests/cpu/test_bench_options.cc checks the C++ side)."""
import argparse
import os
import sys
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "bench", "peers"))

import peer_common  # noqa: E402


def args(minseq, maxseq, stepfactor=2, stepseq=None):
    return argparse.Namespace(minseq=minseq, maxseq=maxseq, stepfactor=stepfactor, stepseq=stepseq)


class PeerCommonTest(unittest.TestCase):
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
