"""Errors for data files: always name the file and what is wrong with it."""


class DataFileError(ValueError):
    """A data file is missing, unreadable, or not laid out as expected."""

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")
