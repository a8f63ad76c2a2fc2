"""Tables, intervals and figures for reports."""
