"""The refresh loop's parts (the orchestration is scopeloop.refresh.Refresher): push sizing, deep-refresh rules, model versions."""
