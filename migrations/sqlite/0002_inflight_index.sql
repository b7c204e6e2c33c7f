-- Outcome writes find their row by the attempt in flight; without this index every settle
-- scanned the hopper (measured: 465 msg/s on 20,000 contacts, slow-statement warnings).
CREATE INDEX hopper_inflight ON hopper (inflight_attempt_id) WHERE inflight_attempt_id IS NOT NULL;
