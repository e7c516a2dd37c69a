"""A judge for tests: one fixed reply to every request, and every request kept."""


class FixedJudge:
    """``complete(messages)`` returns ``reply``; ``requests`` holds the messages it was sent, in order."""

    def __init__(self, reply: str):
        self.reply = reply
        self.requests: list = []

    def complete(self, messages):
        self.requests.append(messages)
        return self.reply
