"""``multiprocessing.shared_memory`` cannot be honoured: calls may run on other machines."""

__all__ = ["ShareableList", "SharedMemory"]

_WHY = (
    "{} cannot be honoured: calls run in worker processes that may be on other machines and share no memory"
    " with this one. Pass data as arguments and results, put large data in storage (cloudbutton.storage), or"
    " share values through the objects of cloudbutton.state"
)


class SharedMemory:
    def __init__(self, *args, **kwargs):
        raise NotImplementedError(_WHY.format("multiprocessing.shared_memory.SharedMemory"))


class ShareableList:
    def __init__(self, *args, **kwargs):
        raise NotImplementedError(_WHY.format("multiprocessing.shared_memory.ShareableList"))
