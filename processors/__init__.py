"""The faust app and the pure decision code: SQL analysis, policy, masking, approvals, executor."""
