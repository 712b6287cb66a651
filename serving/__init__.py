"""serving: the online service, batch scoring, targeting rules, the report and the ``repurchase`` command."""
