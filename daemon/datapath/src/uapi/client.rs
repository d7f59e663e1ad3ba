//! The agent's side of the UAPI: drives a data path that runs as its own process
//! (`wiremesh datapath`), one connection per request, exactly as `wg` does.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::net::UnixStream;
use zeroize::Zeroizing;

use super::reader::{ReadError, RequestReader};
use crate::listen::Limits;

use super::format_set;
use super::state::parse_get;
use crate::model::{DeviceError, DeviceState, SetRequest};

/// A data path that does not answer within this is treated as gone.
const TIMEOUT: Duration = Duration::from_secs(5);

/// A `get` answer for tens of thousands of peers still fits.
const ANSWER_LIMITS: Limits = Limits {
    max_body: 64 << 20,
    ..Limits::UAPI
};

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
                "{}: unexpected answer to set ({} bytes)",
                self.path.display(),
                answer.len()
            ))),
        }
    }

    async fn request(&self, text: &str) -> Result<Zeroizing<String>, DeviceError> {
        tokio::time::timeout(TIMEOUT, self.exchange(text))
            .await
            .map_err(|_| DeviceError::Stopped)?
            .map_err(|_| DeviceError::Stopped)
    }

    /// One request, one answer. The answer to `get` holds the private key: it is read into a
    /// zeroizing buffer, never into an intermediate one.
    async fn exchange(&self, text: &str) -> std::io::Result<Zeroizing<String>> {
        let mut stream = UnixStream::connect(&self.path).await?;
        stream.write_all(text.as_bytes()).await?;
        let mut reader = RequestReader::new(stream);
        let (answer, _) = reader.next(&ANSWER_LIMITS).await.map_err(|e| match e {
            ReadError::Closed => std::io::Error::from(std::io::ErrorKind::UnexpectedEof),
            ReadError::TooLarge(what) => std::io::Error::other(what),
        })?;
        let text = answer
            .as_str()
            .ok_or_else(|| std::io::Error::other("answer is not UTF-8"))?;
        let mut out = Zeroizing::new(String::with_capacity(text.len()));
        out.push_str(text);
        Ok(out)
    }
}
