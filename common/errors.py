"""The base of every error a user can fix; entry scripts print it as one line (exit 2)."""


class VQGenError(Exception):
    pass
