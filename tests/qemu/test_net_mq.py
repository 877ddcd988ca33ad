"""Unit tests of the multiqueue net scenario's verdict (`scenarios_net_mq.judge`)."""

from __future__ import annotations

import unittest

from .scenarios_net_mq import CONNECTIONS, judge, pair_problems


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


def pair_lines(*rows, irq_cpus=None):
    return "\n".join(f"netscale: cpu {c} pair {p} pps=1000 sent={s} notifications=3 "
                      f"queue_interrupts={q} cpu_interrupts={i} irq_cpu={c if irq_cpus is None else irq_cpus[n]}"
                      for n, (c, p, s, q, i) in enumerate(rows))


class PairLinesTest(unittest.TestCase):
    def test_each_cpu_on_its_pair_interrupted_there_passes(self):
        self.assertEqual(pair_problems(pair_lines((0, 0, 90, 5, 8), (1, 1, 80, 6, 6)), cpus=2), [])

    def test_interrupts_sent_to_cpu_0_fail(self):
        problems = pair_problems(pair_lines((0, 0, 90, 5, 20), (1, 1, 80, 6, 0)), cpus=2)
        self.assertTrue(any("went elsewhere" in p for p in problems), problems)
        self.assertTrue(any("no CPU other than 0" in p for p in problems), problems)

    def test_a_message_addressed_to_cpu_0_fails_even_when_the_counts_match(self):
        # What a steering to CPU 0 looked like in a real boot: the watchdog
        # ticks of cpu 1 happened to equal its queue's interrupts.
        problems = pair_problems(pair_lines((0, 0, 90, 20, 24), (1, 1, 80, 2, 2), irq_cpus=[0, 0]), cpus=2)
        self.assertEqual(problems, ["pair 1: its transmit interrupts are addressed to cpu 0, not 1"])

    def test_a_cpu_on_another_pair_or_silent_fails(self):
        problems = pair_problems(pair_lines((0, 0, 90, 5, 8), (1, 0, 0, 6, 6)), cpus=2)
        self.assertEqual(len(problems), 2, problems)

    def test_a_missing_cpu_fails(self):
        self.assertIn("expected 0..1", pair_problems(pair_lines((0, 0, 90, 5, 8)), cpus=2)[0])
