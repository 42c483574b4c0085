"""Hello world: add one to each of 1000 numbers, in parallel, on the configured backend.

Run it as ``python examples/hello.py``. Like any plain script it needs no
``if __name__ == "__main__":`` guard on the default ``local`` backend.
"""

import cloudbutton


def inc(x):
    return x + 1


with cloudbutton.FunctionExecutor() as fexec:
    futures = fexec.map(inc, range(1000))
    print(fexec.get_result(futures))
