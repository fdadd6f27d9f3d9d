"""Issue 7, item 6, the test-sized chaos proof: nothing lost, nothing doubled.

``benchmarks/chaos.py`` (the benchmark runs 5,000) with 300 redemptions at 30/s through the
Sparkfly sandbox, which delivers ~20 % of the conversion callbacks twice (half of them as two
calls at once); the Attentive sandbox failing 30 % of requests (500s, 429s, timeouts); one
worker killed with SIGKILL (its process manager starts it again) and PostgreSQL — the script's
own server — restarted once. See the script for what runs where.
"""

from __future__ import annotations

from tests.deploy.test_db_outage import run_chaos


def test_nothing_is_lost_or_doubled_through_duplicates_faults_a_sigkill_and_a_postgresql_restart(tmp_path):
    report = run_chaos(
        tmp_path, "--callbacks", "300", "--rate", "30", "--sigkills", "1", "--pg-restarts", "1",
        "--drain-timeout", "45", timeout=88,
    )
    injected = report["attentive_injected"]

    # What was injected.
    assert report["duplicated_by_sparkfly"]["concurrent"] > 0 and report["duplicated_by_sparkfly"]["again"] > 0
    assert injected.get("500", 0) > 0 and injected.get("429", 0) > 0 and injected.get("timeout", 0) > 0
    assert report["sigkills"] == 1 and report["pg_restarts"] == 1 and report["injector_errors"] == []
    assert report["worker_starts"] == 3  # two, and the one started again after the SIGKILL
    # Every accepted redemption was delivered, none twice, and the counts reconcile.
    assert report["redeemed"] == report["accepted_202"] == report["redemption_rows"] == 300
    assert report["deliveries_delivered"] == report["attentive_distinct_events"] == 300
    # None twice — but for what at-least-once must send again, each on record as a try whose
    # answer the portal never had: a send already at Attentive when its worker was SIGKILLed
    # before writing its answer (the next claim records the "unknown" try), or one Attentive
    # accepted but answered after the portal's timeout. Most runs see none.
    assert report["checks"][
        "no event reached Attentive twice, but sends whose answer the portal never had (on record)"
    ], report["attentive_twice_tries"]
    assert report["checks"]["every accepted redemption reached Attentive"]
    assert report["duplicates_answered_200"] > 0  # the duplicates were recognised, not recorded again
    # No callback got a 5xx other than the 503s while PostgreSQL was down.
    assert report["bad_5xx"] == [] and report["answered_503"] > 0
    assert report["drained"], report["jobs_left"]
    assert all(report["checks"].values()), report["checks"]
    assert report["exit_status"] == 0, report["output"]
