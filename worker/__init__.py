"""Background workers: importance (Ω from served traffic) and trainer (new tasks)."""
