// A framework on mesos-framework 0.5.3 (npm), a Node.js Mesos client used exactly as its own examples use
// it (examples/commandScheduler.js): its Scheduler launches the tasks it is configured with on the offers it
// gets, acknowledges every update, reconciles, kills and tears down. Nothing is changed for Allot but the
// master's address. Usage: node scheduler.js HOST:PORT (run from the directory setup.sh installed it in).
//
// The scenario, each step checked, "OK" and exit 0 at the end (exit 1 with the reason otherwise):
// 1. two "hello" command tasks finish; each checks $HOST, which the library takes from the offer's `url`;
// 2. a "sleeper" task runs, is killed (KILL) and reports TASK_KILLED;
// 3. explicit reconciliation of a finished task answers its latest state, TASK_FINISHED;
// 4. teardown.
"use strict";

var Scheduler = require("mesos-framework").Scheduler;
var Mesos = require("mesos-framework").Mesos.getMesos();

var master = process.argv[2].split(":");

function fail(why) {
    console.log("FAILED: " + why);
    process.exit(1);
}

var scheduler = new Scheduler({
    "masterUrl": master[0],
    "port": parseInt(master[1], 10),
    "frameworkName": "mesos-framework-test",
    "logging": {"level": "info"},
    "tasks": {
        "hello": {
            "priority": 1,
            "instances": 2,
            "commandInfo": new Mesos.CommandInfo(null, null, true, "test -n \"$HOST\" && echo hello from $HOST", null, null),
            "resources": {"cpus": 0.1, "mem": 32, "ports": 0, "disk": 0}
        },
        "sleeper": {
            "priority": 2,
            "instances": 1,
            "commandInfo": new Mesos.CommandInfo(null, null, true, "sleep 60", null, null),
            "resources": {"cpus": 0.1, "mem": 32, "ports": 0, "disk": 0}
        }
    }
});

var finished = {};
var killed = false;
var reconciled = false;
var killSent = false;

function check() {
    if (Object.keys(finished).length === 2 && killed && !reconciled) {
        var id = Object.keys(finished)[0];
        scheduler.reconcile(id, finished[id]);
    }
}

scheduler.on("update", function (update) {
    var status = update.status;
    var id = status.task_id.value;
    var agent = status.agent_id ? status.agent_id.value : null;
    console.log("UPDATE " + id + " " + status.state + (status.uuid ? "" : " (reconciliation)"));
    if (id.indexOf(".hello-") >= 0) {
        if (status.state === "TASK_FAILED") {
            fail("a hello task failed: " + (status.message || "") + " (is the offer's url there?)");
        }
        if (status.state === "TASK_FINISHED") {
            if (!status.uuid && finished[id]) {
                reconciled = true;
                scheduler.teardown();
                console.log("OK");
                setTimeout(function () { process.exit(0); }, 500);
                return;
            }
            finished[id] = agent;
        }
    } else if (id.indexOf(".sleeper-") >= 0) {
        if (status.state === "TASK_RUNNING" && !killSent) {
            killSent = true;
            scheduler.kill(id, agent);
        } else if (status.state === "TASK_KILLED") {
            killed = true;
        } else if (status.state !== "TASK_STARTING" && status.state !== "TASK_RUNNING") {
            fail("the sleeper ended " + status.state);
        }
    }
    check();
});

scheduler.on("error", function (e) {
    console.log("ERROR " + (e && e.message ? e.message : JSON.stringify(e)));
});

scheduler.on("ready", function () {
    scheduler.subscribe();
});

setTimeout(function () { fail("timed out"); }, 60000);
