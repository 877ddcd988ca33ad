"""Unit tests of the multiqueue net scenario's verdict (`scenarios_net_mq.judge`)."""

from __future__ import annotations

import unittest

from .scenarios_net_mq import CONNECTIONS, judge


def report(echo=None, completions=(5, 3, 0, 0)):
    return {
        "echo": echo if echo is not None else [[True, 3000]] * CONNECTIONS,
        "queues": [{"name": f"receiveq{i + 1}", "completions": c, "interrupts": 0}
                   for i, c in enumerate(completions)]
        + [{"name": "controlq", "completions": 1, "interrupts": 1}],
    }


class JudgeTest(unittest.TestCase):
    def test_good_echo_on_two_queues_passes(self):
        self.assertEqual(judge(report()), [])

    def test_all_packets_on_one_queue_fails(self):
        problems = judge(report(completions=(9, 0, 0, 0)))
        self.assertEqual(len(problems), 1)
        self.assertIn("receiveq1", problems[0])

    def test_a_wrong_echo_fails(self):
        echo = [[True, 3000]] * (CONNECTIONS - 1) + [[False, 2999]]
        self.assertIn("connection 7", judge(report(echo=echo))[0])

    def test_status_page_rows_must_name_every_queue(self):
        good = report()
        good["status_rows"] = ["0 rx", "1 tx", "2 rx", "3 tx", "4 rx", "5 tx", "6 rx", "7 tx", "8 ctrl"]
        self.assertEqual(judge(good), [])
        good["status_rows"] = ["0 rx", "1 tx", "2 ctrl"]
        self.assertIn("status page", judge(good)[0])

    def test_a_missing_receive_queue_fails(self):
        self.assertTrue(judge(report(completions=(5, 3))))


if __name__ == "__main__":
    unittest.main()
