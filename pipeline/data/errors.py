"""What a reader raises for a file it cannot decode; the message is the reason the report shows."""


class UnreadableImage(Exception):
    """An image file that cannot be decoded; the message is the reason shown in the report."""
