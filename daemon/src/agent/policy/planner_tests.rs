//! Unit tests of the policy planner.
