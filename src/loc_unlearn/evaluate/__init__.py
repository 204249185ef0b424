"""Evaluation (SPEC §2-4): token metrics from shared teacher-forced passes, generation + ROUGE-L,
TOFU metrics (FQ, MU), trade-off summaries (AUES, MU95) and paired statistics."""
