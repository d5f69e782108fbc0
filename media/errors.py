"""Domain errors: permanent ones fail a job with a sentence, transient ones are retried."""


class MediaError(Exception):
    """A permanent problem with an input; the message is shown to the person who sent it."""


class UnsupportedMedia(MediaError):
    """The bytes are not an image or video this service processes."""


class Cancelled(Exception):
    """The work is no longer wanted (its asset was deleted) and was stopped."""


class TransientError(Exception):
    """A temporary fault outside the input (storage or network); retrying may succeed."""


class StorageUnavailable(TransientError):
    """The storage backend could not be reached or answered with a server error."""
