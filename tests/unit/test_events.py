"""Publishing frames from worker threads: one long-lived loop per process."""
import os

from chat.conversations import events


def test_a_forked_child_publishes_through_its_own_loop():
    """A child forked after the publishing loop started gets a loop of its own (not the dead copy)."""
    parent_loop = events._publisher._ensure_loop()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report whether it would publish through a running loop of its own
        try:
            fresh = events._publisher._loop is None and events._publisher._ensure_loop() is not parent_loop
            os.write(write, b"1" if fresh else b"0")
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(read, 1) == b"1"
