"""Range estimators in one registry (`methods.CALIBRATORS`) and the precision policy (scopes, presets)."""
