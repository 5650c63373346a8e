#!/usr/bin/env python3
"""A pymesos framework, written as pymesos' own example scheduler is (MesosSchedulerDriver, a Scheduler whose
resourceOffers launches tasks), run against Allot's Mesos API unmodified: only the master address differs.

    python scheduler.py MASTER PRINCIPAL SECRET EXECUTOR_COMMAND

It launches, on its first offer, command tasks that finish, fail and are killed, and two tasks of its own
executor (tests/pymesos/executor.py); exchanges framework messages with the executor, makes it exit and
expects executorLost and the second task's TASK_FAILED; reconciles explicitly and implicitly; declines with
a filter; stops with failover=True and re-subscribes with a new driver and the framework's ID
(reregistered); suppresses offers, revives them and gets one; and tears down. It prints what it saw as
JSON and exits 0 only if everything came as Mesos says.
"""
import getpass
import json
import socket
import sys
import threading
import time

from addict import Dict
from pymesos import MesosSchedulerDriver, Scheduler, decode_data, encode_data

TERMINAL = {'TASK_FINISHED', 'TASK_FAILED', 'TASK_KILLED', 'TASK_LOST', 'TASK_ERROR', 'TASK_DROPPED'}


def scalar(name, value):
    return Dict(name=name, type='SCALAR', scalar=Dict(value=value))


class TestScheduler(Scheduler):
    def __init__(self, executor_command):
        self.executor = Dict()
        self.executor.executor_id.value = 'pyexec'
        self.executor.name = 'pymesos test executor'
        self.executor.command.value = executor_command
        self.executor.resources = [scalar('cpus', 0.1), scalar('mem', 64)]
        self.launched = False
        self.states = {}
        self.uuids = {}
        self.messages = []
        self.lost = []
        self.reconciled = []
        self.agent = None
        self.done = threading.Event()
        self.errors = []
        self.stage = 'run'

    def registered(self, driver, framework_id, master_info):
        self.framework_id = framework_id['value']

    def task(self, offer, task_id, command=None, data=None):
        t = Dict()
        t.task_id.value = task_id
        t.agent_id.value = offer.agent_id.value
        t.name = 'pymesos ' + task_id
        t.resources = [scalar('cpus', 0.1), scalar('mem', 32)]
        if command is not None:
            t.command.value = command
        else:
            t.executor = self.executor
            t.data = encode_data(data)
        return t

    def resourceOffers(self, driver, offers):
        for offer in offers:
            if self.launched:
                # Declined with a filter: the agent stays away for refuse_seconds.
                driver.declineOffer(offer.id, Dict(refuse_seconds=60))
                continue
            self.launched = True
            self.agent = offer.agent_id.value
            tasks = [
                self.task(offer, 'ok', command='echo pymesos-ok'),
                self.task(offer, 'fails', command='exit 3'),
                self.task(offer, 'sleeper', command='sleep 60'),
                self.task(offer, 'ex1', data=b'finish'),
                self.task(offer, 'ex2', data=b'stay'),
            ]
            driver.launchTasks(offer.id, tasks, Dict(refuse_seconds=60))

    def statusUpdate(self, driver, update):
        task_id = update.task_id.value
        state = update.state
        if 'uuid' in update:
            # Updates are delivered at least once (re-sent until acknowledged, as in Mesos): a repeat carries
            # the same uuid and is not news.
            if update.uuid in self.uuids:
                return
            self.uuids[update.uuid] = task_id
            self.states.setdefault(task_id, []).append(state)
        else:
            self.reconciled.append((task_id, state))
        if task_id == 'sleeper' and state == 'TASK_RUNNING':
            driver.killTask(Dict(value='sleeper'))
        if task_id == 'ex1' and state == 'TASK_FINISHED':
            self.executor_pid = decode_data(update.data).decode()
            driver.sendFrameworkMessage(Dict(value='pyexec'), Dict(value=self.agent), encode_data(b'ping'))
        self.check(driver)

    def frameworkMessage(self, driver, executorId, agentId, message):
        self.messages.append(decode_data(message).decode())
        if decode_data(message) == b'pong:ping':
            driver.sendFrameworkMessage(executorId, agentId, encode_data(b'exit'))

    def executorLost(self, driver, executorId, agentId, status):
        self.lost.append((executorId['value'], agentId['value'], status))
        self.check(driver)

    def error(self, driver, message):
        self.errors.append(message)

    def check(self, driver):
        ended = all(s and s[-1] in TERMINAL for s in (self.states.get(t) for t in ['ok', 'fails', 'sleeper', 'ex1', 'ex2']))
        if self.stage == 'run' and ended and self.lost:
            self.stage = 'reconcile'
            driver.reconcileTasks([Dict(task_id=Dict(value='ok'))])
            driver.reconcileTasks([])
            threading.Timer(1.0, self.done.set).start()


class FailoverScheduler(Scheduler):
    """The framework's second scheduler, after the first stopped with failover=True: it re-subscribes with the
    framework's ID, suppresses offers, and revives them (which also clears the first one's decline filter)."""

    def __init__(self):
        self.did_reregister = False
        self.suppressed = False
        self.offers_while_suppressed = 0
        self.revived_offer = False
        self.done = threading.Event()

    def registered(self, driver, framework_id, master_info):
        pass

    def reregistered(self, driver, master_info):
        self.did_reregister = True
        self.suppressed = True
        driver.suppressOffers()

        def revive():
            self.suppressed = False
            driver.reviveOffers()

        threading.Timer(3.0, revive).start()

    def resourceOffers(self, driver, offers):
        for offer in offers:
            if self.suppressed:
                self.offers_while_suppressed += 1
            else:
                self.revived_offer = True
                self.done.set()
            driver.declineOffer(offer.id, Dict(refuse_seconds=60))


def main():
    master, principal, secret, executor_command = sys.argv[1:5]
    framework = Dict()
    framework.user = getpass.getuser()
    framework.name = 'pymesos-test'
    framework.hostname = socket.gethostname()
    framework.failover_timeout = 10
    scheduler = TestScheduler(executor_command)
    driver = MesosSchedulerDriver(scheduler, framework, master, use_addict=True,
                                  principal=principal, secret=secret)
    driver.start()
    finished = scheduler.done.wait(90)
    # Fail over: this scheduler goes away leaving the framework (within its failover_timeout), and a new one
    # re-subscribes with the framework's ID.
    driver.stop(failover=True)
    driver.join()
    framework.id = Dict(value=scheduler.framework_id)
    second = FailoverScheduler()
    driver = MesosSchedulerDriver(second, framework, master, use_addict=True,
                                  principal=principal, secret=secret)
    driver.start()
    failed_over = second.done.wait(60)
    driver.stop()  # TEARDOWN
    driver.join()
    seen = dict(states=scheduler.states, messages=scheduler.messages, lost=scheduler.lost,
                reconciled=scheduler.reconciled, errors=scheduler.errors, finished=finished,
                reregistered=second.did_reregister, offers_while_suppressed=second.offers_while_suppressed,
                revived_offer=second.revived_offer)
    print(json.dumps(seen))
    expect = {
        'ok': ['TASK_STARTING', 'TASK_RUNNING', 'TASK_FINISHED'],
        'fails': ['TASK_STARTING', 'TASK_RUNNING', 'TASK_FAILED'],
        'sleeper': ['TASK_STARTING', 'TASK_RUNNING', 'TASK_KILLED'],
        'ex1': ['TASK_RUNNING', 'TASK_FINISHED'],
        'ex2': ['TASK_RUNNING', 'TASK_FAILED'],
    }
    problems = [] if finished else ['the scenario did not finish within 90 s']
    for task, states in expect.items():
        if scheduler.states.get(task) != states:
            problems.append('%s: %s, expected %s' % (task, scheduler.states.get(task), states))
    if scheduler.messages != ['pong:ping']:
        problems.append('messages: %s' % scheduler.messages)
    if [(e, s) for e, _, s in scheduler.lost] != [('pyexec', 5 << 8)]:
        problems.append('executorLost: %s' % scheduler.lost)
    if ('ok', 'TASK_FINISHED') not in scheduler.reconciled:
        problems.append('explicit reconciliation: %s' % scheduler.reconciled)
    if not (failed_over and second.did_reregister and second.revived_offer):
        problems.append('failover, suppress and revive: %s' % seen)
    if second.offers_while_suppressed:
        problems.append('%d offers while suppressed' % second.offers_while_suppressed)
    for p in problems:
        print('PROBLEM: ' + p, file=sys.stderr)
    sys.exit(1 if problems else 0)


if __name__ == '__main__':
    main()
