//! The agent's side of the UAPI: drives a data path that runs as its own process
//! (`wiremesh datapath`), one connection per request, exactly as `wg` does.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use super::uapi::format_set;
use super::uapi_state::parse_get;
use super::{DeviceError, DeviceState, SetRequest};

/// A data path that does not answer within this is treated as gone.
const TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct UapiClient {
    path: PathBuf,
}

impl UapiClient {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub async fn get(&self) -> Result<DeviceState, DeviceError> {
        let answer = self.request("wiremesh_get=1\n\n").await?;
        parse_get(&answer)
            .map_err(|e| DeviceError::Invalid(format!("{}: {e}", self.path.display())))
    }

    pub async fn set(&self, req: &SetRequest) -> Result<(), DeviceError> {
        let answer = self.request(&format_set(req)).await?;
        match answer
            .trim_end()
            .strip_prefix("errno=")
            .map(str::parse::<i32>)
        {
            Some(Ok(0)) => Ok(()),
            Some(Ok(n)) => Err(DeviceError::Invalid(format!(
                "data path at {} refused the change: {}",
                self.path.display(),
                std::io::Error::from_raw_os_error(n)
            ))),
            _ => Err(DeviceError::Invalid(format!(
                "{}: unexpected answer {answer:?}",
                self.path.display()
            ))),
        }
    }

    async fn request(&self, text: &str) -> Result<String, DeviceError> {
        tokio::time::timeout(TIMEOUT, self.exchange(text))
            .await
            .map_err(|_| DeviceError::Stopped)?
            .map_err(|_| DeviceError::Stopped)
    }

    async fn exchange(&self, text: &str) -> std::io::Result<String> {
        let mut stream = UnixStream::connect(&self.path).await?;
        stream.write_all(text.as_bytes()).await?;
        let mut reader = BufReader::new(stream);
        let mut answer = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).await? == 0 || line == "\n" {
                break;
            }
            answer.push_str(&line);
        }
        Ok(answer)
    }
}
