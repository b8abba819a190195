"""Flow control: who may start a call and when (rate limits, pacing, AIMD, patience)."""
