"""The error a user's input (a flag, a gin value, a file) raises: the entries print it as
one line. A ValueError, so that code catching ValueError still catches it; any other
exception is a bug and keeps its traceback."""


class InputError(ValueError):
    pass
