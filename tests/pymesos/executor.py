#!/usr/bin/env python3
"""A pymesos custom executor, written as pymesos' own example executor is (MesosExecutorDriver, an Executor
with launchTask on a thread): for tests/pymesos/scheduler.py. Run by an Allot agent, unmodified.

A task whose data is `finish` reports TASK_RUNNING then TASK_FINISHED (its data: this process's pid); any
other task reports TASK_RUNNING and runs until killed. A framework message `exit` ends the process with status
5; any other is answered `pong:<message>`.
"""
import os
import time
from threading import Thread

from addict import Dict
from pymesos import Executor, MesosExecutorDriver, decode_data, encode_data


def update(task_id, state, data=None):
    u = Dict()
    u.task_id.value = task_id
    u.state = state
    u.timestamp = time.time()
    if data is not None:
        u.data = encode_data(data)
    return u


class TestExecutor(Executor):
    def launchTask(self, driver, task):
        def run():
            task_id = task.task_id.value
            driver.sendStatusUpdate(update(task_id, 'TASK_RUNNING'))
            if decode_data(task.data) == b'finish':
                time.sleep(0.2)
                driver.sendStatusUpdate(update(task_id, 'TASK_FINISHED', str(os.getpid()).encode()))

        thread = Thread(target=run)
        thread.start()

    def killTask(self, driver, task_id):
        driver.sendStatusUpdate(update(task_id.value, 'TASK_KILLED'))

    def frameworkMessage(self, driver, message):
        data = decode_data(message)
        if data == b'exit':
            os._exit(5)
        driver.sendFrameworkMessage(encode_data(b'pong:' + data))


if __name__ == '__main__':
    MesosExecutorDriver(TestExecutor(), use_addict=True).run()
