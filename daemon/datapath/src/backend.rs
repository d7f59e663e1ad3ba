//! The data-path seam: one enum, one variant per backend, both speaking `SetRequest` /
//! `DeviceState`. `auto` picks the kernel module where it exists and the userspace data path
//! everywhere else.

use std::sync::Arc;

use crate::model::{DeviceError, DeviceState, SetRequest};
use crate::uapi::client::UapiClient;
use crate::{kernel, userspace};

pub enum Datapath {
    /// The userspace data path in this process (what `wiremesh datapath` runs).
    Userspace(userspace::Handle),
    /// The userspace data path in its own process, driven over its UAPI socket (what the agent
    /// uses, so that it can restart without touching a session).
    Process(UapiClient),
    Kernel(Arc<kernel::Kernel>),
}

impl Datapath {
    pub fn kind(&self) -> &'static str {
        match self {
            Datapath::Userspace(_) | Datapath::Process(_) => "userspace",
            Datapath::Kernel(_) => "kernel",
        }
    }

    pub async fn set(&self, req: SetRequest) -> Result<(), DeviceError> {
        match self {
            Datapath::Userspace(h) => h.set(req).await,
            Datapath::Process(c) => c.set(&req).await,
            Datapath::Kernel(k) => {
                let k = k.clone();
                tokio::task::spawn_blocking(move || k.set(req))
                    .await
                    .map_err(|e| DeviceError::Kernel(e.to_string()))?
            }
        }
    }

    pub async fn get(&self) -> Result<DeviceState, DeviceError> {
        match self {
            Datapath::Userspace(h) => h.get().await,
            Datapath::Process(c) => c.get().await,
            Datapath::Kernel(k) => {
                let k = k.clone();
                tokio::task::spawn_blocking(move || k.get())
                    .await
                    .map_err(|e| DeviceError::Kernel(e.to_string()))?
            }
        }
    }
}
