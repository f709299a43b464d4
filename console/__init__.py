"""``querytrail console``: the web console for approvers and auditors (docs/console.md)."""
