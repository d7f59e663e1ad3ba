//! Task health as the admin API reports it (`/healthz`, `encrypt status`): one entry per
//! supervised task of the agent. The supervisor publishes it; the admin server only reads it.

use serde::{Deserialize, Serialize};

/// The health of every supervised task. Empty (no task reported) counts as healthy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    pub tasks: Vec<TaskHealth>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskHealth {
    /// The task's name, e.g. `rotation` or `policy`.
    pub name: String,
    #[serde(flatten)]
    pub state: TaskState,
    /// Times the supervisor restarted it.
    pub restarts: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "state")]
pub enum TaskState {
    Running,
    /// The task panicked or returned; `reason` says how.
    Failed {
        reason: String,
    },
}

impl Health {
    /// Every task runs: `/healthz` answers "ok".
    pub fn is_ok(&self) -> bool {
        self.tasks
            .iter()
            .all(|t| matches!(t.state, TaskState::Running))
    }

    /// Nothing to report: every task runs and none was ever restarted. `encrypt status` shows
    /// task health only when it is not quiet, so a healthy agent's status is unchanged.
    pub fn is_quiet(&self) -> bool {
        self.is_ok() && self.tasks.iter().all(|t| t.restarts == 0)
    }

    /// One line per task that failed or was restarted, for `/healthz` and `encrypt status`.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for t in self
            .tasks
            .iter()
            .filter(|t| t.restarts > 0 || !matches!(t.state, TaskState::Running))
        {
            let state = match &t.state {
                TaskState::Running => "running".to_string(),
                TaskState::Failed { reason } => format!("FAILED: {reason}"),
            };
            out.push_str(&format!(
                "task {}: {state} (restarted {} times)\n",
                t.name, t.restarts
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(name: &str, state: TaskState, restarts: u32) -> TaskHealth {
        TaskHealth {
            name: name.into(),
            state,
            restarts,
        }
    }

    #[test]
    fn a_failed_task_is_not_ok_and_is_named() {
        let failed = TaskState::Failed {
            reason: "panicked: boom".into(),
        };
        let h = Health {
            tasks: vec![
                task("policy", TaskState::Running, 0),
                task("rotation", failed, 2),
            ],
        };
        assert!(!h.is_ok() && !h.is_quiet());
        assert_eq!(
            h.render(),
            "task rotation: FAILED: panicked: boom (restarted 2 times)\n"
        );
        // The control: all running, none restarted.
        let ok = Health {
            tasks: vec![task("policy", TaskState::Running, 0)],
        };
        assert!(ok.is_ok() && ok.is_quiet() && ok.render().is_empty());
        let restarted = Health {
            tasks: vec![task("policy", TaskState::Running, 1)],
        };
        assert!(restarted.is_ok() && !restarted.is_quiet());
    }

    #[test]
    fn round_trips_as_json() {
        let h = Health {
            tasks: vec![task(
                "rotation",
                TaskState::Failed { reason: "x".into() },
                1,
            )],
        };
        let json = serde_json::to_string(&h).unwrap();
        assert_eq!(
            json,
            r#"{"tasks":[{"name":"rotation","state":"failed","reason":"x","restarts":1}]}"#
        );
        assert_eq!(serde_json::from_str::<Health>(&json).unwrap(), h);
    }
}
