"""Scenarios run the same way on several stores: each distribution's tests call
them with that store's environment (tests/<package>/ stay runnable with only
that package installed; these modules need nuvom-core alone)."""
