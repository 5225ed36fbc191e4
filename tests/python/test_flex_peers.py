"""bench/peers/flex_peers.py, the parts that run without torch: the exact visible-pair counts (against a brute
force over the very mask_mod handed to create_block_mask, evaluated on Python ints), the closed forms the C++
side also checks (tests/cpu/test_block_sparse.cc, PairCountsLarge), labels and argument checks."""
import os
import sys
import unittest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "bench", "peers"))

import flex_peers  # noqa: E402


def brute(pattern, S, block=2048, window=0, causal=False):
    mod = flex_peers.make_mask_mod(pattern, block, window, causal)
    return sum(1 for i in range(S) for j in range(S) if mod(0, 0, i, j))


class FlexPeersTest(unittest.TestCase):
    def test_no_torch_imported(self):
        self.assertNotIn("torch", sys.modules)

    def test_pairs_match_the_mask_mod(self):
        # Odd sizes: short last segment / block.
        for S in (300, 515):
            for causal in (False, True):
                self.assertEqual(flex_peers.visible_pairs("block-diagonal", S, 128, 0, causal),
                                 brute("block-diagonal", S, 128, 0, causal))
                self.assertEqual(flex_peers.visible_pairs("sliding-window", S, 0, 77, causal),
                                 brute("sliding-window", S, 0, 77, causal))
                self.assertEqual(flex_peers.visible_pairs("strided", S, 256, 0, causal),
                                 brute("strided", S, 256, 0, causal))

    def test_closed_forms_at_64k(self):
        S, W = 65536, 2048
        self.assertEqual(flex_peers.visible_pairs("sliding-window", S, 0, W, True), W * (W + 1) // 2 + (S - W) * W)
        self.assertEqual(flex_peers.visible_pairs("block-diagonal", S, 2048, 0, False), (S // 2048) * 2048 * 2048)
        self.assertEqual(flex_peers.visible_pairs("sliding-window", 1000, 0, 5000, False), 1000 * 1000)

    def test_flops_and_labels(self):
        self.assertEqual(flex_peers.useful_flops(1, 32, 128, 10, "fwd"), 4.0 * 32 * 128 * 10)
        self.assertEqual(flex_peers.useful_flops(1, 32, 128, 10, "fwdbwd"), 3.5 * 4.0 * 32 * 128 * 10)
        self.assertEqual(flex_peers.pattern_label("block-diagonal", 2048, 0, False), "bdiag2048")
        self.assertEqual(flex_peers.pattern_label("sliding-window", 2048, 2048, True), "win2048-c")
        self.assertEqual(flex_peers.pattern_label("random", 2048, 0, False, 5), "random5")

    def test_arguments(self):
        a = flex_peers.parse_args(["--sparse-pattern", "sliding-window", "--window", "2K", "--causal"])
        self.assertEqual(a.window, 2048)
        self.assertTrue(a.causal)
        with self.assertRaises(SystemExit):
            flex_peers.parse_args(["--sparse-pattern", "sliding-window"])  # no window
        with self.assertRaises(SystemExit):
            flex_peers.parse_args(["--sparse-pattern", "block-diagonal", "--window", "64"])
        with self.assertRaises(ValueError):
            flex_peers.visible_pairs("bigbird", 1024)
        with self.assertRaises(ValueError):
            flex_peers.visible_pairs("strided", 1024, block=100)


if __name__ == "__main__":
    unittest.main()
