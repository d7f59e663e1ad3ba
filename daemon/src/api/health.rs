//! Task health as the admin API reports it (`/healthz`, `encrypt status`): one entry per
//! supervised task of the agent, by name. The supervisor (`agent/supervisor.rs`) publishes it;
//! the admin server only reads it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Every supervised task by name. Empty (no task reported) counts as healthy.
pub type Health = BTreeMap<String, TaskStatus>;

/// What the health view says of one task.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskStatus {
    pub state: TaskState,
    /// Restarts since the agent started.
    pub restarts: u32,
    /// How the task last ended (panic message or error), if it ever did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum TaskState {
    Running,
    /// Ended; starts again after its backoff.
    Restarting,
}

/// Names the tasks that are not running, for `/healthz`; `None` when all are.
pub fn unhealthy(health: &Health) -> Option<String> {
    let down: Vec<String> = health
        .iter()
        .filter(|(_, s)| s.state != TaskState::Running)
        .map(|(name, s)| {
            let why = s.last_failure.as_deref().unwrap_or("ended");
            format!("task {name} is restarting ({why})")
        })
        .collect();
    (!down.is_empty()).then(|| down.join("; "))
}

/// Nothing to report: every task runs and none was ever restarted. `encrypt status` shows task
/// health only when it is not quiet, so a healthy agent's status reads as it always has.
pub fn is_quiet(health: &Health) -> bool {
    health
        .values()
        .all(|s| s.state == TaskState::Running && s.restarts == 0)
}

/// One line per task that is restarting or was restarted, for `encrypt status`.
pub fn render(health: &Health) -> String {
    let mut out = String::new();
    for (name, s) in health {
        if s.state == TaskState::Running && s.restarts == 0 {
            continue;
        }
        let state = match s.state {
            TaskState::Running => "running",
            TaskState::Restarting => "RESTARTING",
        };
        let last = s
            .last_failure
            .as_deref()
            .map(|f| format!(", last failure: {f}"))
            .unwrap_or_default();
        out.push_str(&format!(
            "Task {name}: {state} (restarted {} times{last})\n",
            s.restarts
        ));
    }
    out
}

/// Every task, `[+]task NAME ok` or `[-]task NAME restarting (WHY)`, then `healthz check
/// passed` or `failed` (the shape of Kubernetes' `/healthz?verbose`).
pub fn render_verbose(health: &Health) -> String {
    let mut out = String::new();
    for (name, s) in health {
        let restarts = match s.restarts {
            0 => String::new(),
            n => format!(" (restarted {n} times)"),
        };
        match s.state {
            TaskState::Running => out.push_str(&format!("[+]task {name} ok{restarts}\n")),
            TaskState::Restarting => {
                let why = s.last_failure.as_deref().unwrap_or("ended");
                out.push_str(&format!("[-]task {name} restarting ({why}){restarts}\n"))
            }
        }
    }
    let verdict = if unhealthy(health).is_none() {
        "passed"
    } else {
        "failed"
    };
    out.push_str(&format!("healthz check {verdict}\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(state: TaskState, restarts: u32, last: Option<&str>) -> TaskStatus {
        TaskStatus {
            state,
            restarts,
            last_failure: last.map(str::to_string),
        }
    }

    #[test]
    fn a_restarting_task_is_unhealthy_and_named() {
        let mut h = Health::new();
        h.insert("policy".into(), task(TaskState::Running, 0, None));
        // The control: all running, none restarted.
        assert_eq!(unhealthy(&h), None);
        assert!(is_quiet(&h) && render(&h).is_empty());
        h.insert(
            "rotation".into(),
            task(TaskState::Restarting, 2, Some("panicked: boom")),
        );
        assert_eq!(
            unhealthy(&h).as_deref(),
            Some("task rotation is restarting (panicked: boom)")
        );
        assert!(!is_quiet(&h));
        assert_eq!(
            render(&h),
            "Task rotation: RESTARTING (restarted 2 times, last failure: panicked: boom)\n"
        );
        // Restarted, running again: healthy, but still shown in status.
        h.insert(
            "rotation".into(),
            task(TaskState::Running, 3, Some("panicked: boom")),
        );
        assert_eq!(unhealthy(&h), None);
        assert!(!is_quiet(&h));
    }

    #[test]
    fn verbose_lists_every_task_and_the_verdict() {
        let mut h = Health::new();
        h.insert("admin".into(), task(TaskState::Running, 0, None));
        h.insert("policy".into(), task(TaskState::Running, 1, Some("x")));
        assert_eq!(
            render_verbose(&h),
            "[+]task admin ok\n[+]task policy ok (restarted 1 times)\nhealthz check passed\n"
        );
        h.insert(
            "strict-guard".into(),
            task(TaskState::Restarting, 0, Some("panicked: nft")),
        );
        assert_eq!(
            render_verbose(&h),
            "[+]task admin ok\n[+]task policy ok (restarted 1 times)\n\
             [-]task strict-guard restarting (panicked: nft)\nhealthz check failed\n"
        );
    }

    #[test]
    fn round_trips_as_json() {
        let mut h = Health::new();
        h.insert("rotation".into(), task(TaskState::Restarting, 1, Some("x")));
        let json = serde_json::to_string(&h).unwrap();
        assert_eq!(
            json,
            r#"{"rotation":{"state":"restarting","restarts":1,"lastFailure":"x"}}"#
        );
        assert_eq!(serde_json::from_str::<Health>(&json).unwrap(), h);
    }
}
