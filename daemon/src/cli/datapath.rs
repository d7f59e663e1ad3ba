//! `wiremesh datapath` (the userspace data path as a process: started by the agent, or as the
//! `wiremesh-datapath` DaemonSet's container with `--config`) and `wiremesh datapath-probe`
//! (that container's readiness and liveness probes).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use wiremesh_datapath::process::{Options, PodOptions, Probe};

use crate::config::{self, Config, DatapathProcess};

#[derive(Args)]
pub struct DatapathArgs {
    /// Run as the data-path DaemonSet's container: every setting below comes from the agent's
    /// config file (which must say `datapathProcess: external`); the node key is waited for; a
    /// data path already running is taken over; after handing over to a successor this process
    /// stays, idle, until stopped.
    #[arg(
        long,
        short = 'c',
        conflicts_with_all = ["interface", "listen_port", "key_file", "pid_file", "admin_group", "no_offload", "take_over"]
    )]
    config: Option<PathBuf>,
    /// With --config: the pod's own directory (an emptyDir), where the status file that
    /// `wiremesh datapath-probe` reads is kept.
    #[arg(long, requires = "config")]
    status_dir: Option<PathBuf>,
    /// Interface to create (config key `interface`).
    #[arg(long, default_value = config::DEFAULT_INTERFACE)]
    interface: String,
    /// UDP port (config key `listenPort`).
    #[arg(long, default_value_t = config::DEFAULT_PORT)]
    listen_port: u16,
    /// The node's private key file, created by the agent (`<stateDir>/<interface>.key`).
    #[arg(long, required_unless_present = "config")]
    key_file: Option<PathBuf>,
    /// Where to write this process's PID (the handover socket is next to it).
    #[arg(long)]
    pid_file: Option<PathBuf>,
    /// Members of this group (gid) may read (`get`, without keys) on the UAPI socket
    /// (config key `adminGroup`).
    #[arg(long)]
    admin_group: Option<u32>,
    /// Move one packet per system call: no TUN segmentation/coalescing, no UDP GSO/GRO
    /// (config key `offload: false`). For kernels or drivers where they misbehave.
    #[arg(long)]
    no_offload: bool,
    /// Take the interface, sockets and peers over from the data path running now (an
    /// in-place upgrade; the agent passes it when the running data path's version differs).
    #[arg(long)]
    take_over: bool,
}

#[derive(Args)]
pub struct ProbeArgs {
    /// The data-path container's `--status-dir`.
    #[arg(long)]
    status_dir: PathBuf,
    /// The liveness probe (alive: waiting for the key, idle after a handover, or serving);
    /// without it, the readiness probe (this pod's process serves the interface, alone).
    #[arg(long)]
    liveness: bool,
}

/// `wiremesh datapath`.
pub fn run(args: DatapathArgs) -> ExitCode {
    let opts = match args.config {
        Some(path) => match pod_options(&path, args.status_dir) {
            Ok(opts) => opts,
            Err(e) => {
                eprintln!("wiremesh datapath: {e}");
                return ExitCode::from(2);
            }
        },
        None => Options {
            interface: args.interface,
            listen_port: args.listen_port,
            key_file: args
                .key_file
                .expect("clap requires --key-file without --config"),
            pid_file: args.pid_file,
            admin_group: args.admin_group,
            offload: !args.no_offload,
            take_over: args.take_over,
            pod: None,
        },
    };
    super::agent::run_datapath(opts)
}

/// The options of the data-path pod, from the agent's config file.
fn pod_options(path: &std::path::Path, status_dir: Option<PathBuf>) -> anyhow::Result<Options> {
    let config = Config::load(path)?;
    if config.datapath_process != DatapathProcess::External {
        anyhow::bail!(
            "{}: datapathProcess: the data-path pod runs only with `datapathProcess: external` \
             (otherwise the agent starts a data path of its own and the two fight over {})",
            path.display(),
            config.interface
        );
    }
    Ok(Options {
        interface: config.interface.clone(),
        listen_port: config.listen_port,
        key_file: config.key_path(),
        pid_file: Some(crate::agent::start::pid_file(&config)),
        admin_group: config.admin_group,
        offload: config.offload,
        take_over: false,
        pod: Some(PodOptions { status_dir }),
    })
}

/// `wiremesh datapath-probe`: exit 0 and what was seen, or 1 and why not.
pub fn probe(args: &ProbeArgs) -> ExitCode {
    let which = if args.liveness {
        Probe::Liveness
    } else {
        Probe::Readiness
    };
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| {
            rt.block_on(wiremesh_datapath::process::pod::probe(
                &args.status_dir,
                which,
            ))
        });
    match result {
        Ok(seen) => {
            println!("{seen}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("{e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_file(extra: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        let text = format!(
            "nodeName: n1\nnodeIPs: [198.18.0.7]\nstateDir: /var/lib/wm\nrunDir: /run/wm\n\
             listenPort: 51999\noffload: false\nclusterPodCIDRs: [10.244.0.0/16]\n{extra}"
        );
        std::fs::write(file.path(), text).unwrap();
        file
    }

    #[test]
    fn the_pod_takes_every_setting_from_the_agents_config() {
        let file = config_file("datapath: userspace\ndatapathProcess: external\n");
        let opts = pod_options(file.path(), Some("/run/pod".into())).unwrap();
        assert_eq!(opts.interface, "wiremesh_wg0");
        assert_eq!(opts.listen_port, 51999);
        assert!(!opts.offload);
        assert_eq!(opts.key_file, PathBuf::from("/var/lib/wm/wiremesh_wg0.key"));
        assert_eq!(opts.pid_file, Some(PathBuf::from("/run/wm/datapath.pid")));
        assert!(!opts.take_over, "a pod takes over only what is running");
        let pod = opts.pod.expect("pod mode");
        assert_eq!(pod.status_dir, Some(PathBuf::from("/run/pod")));
    }

    #[test]
    fn the_pod_refuses_a_config_whose_agent_starts_its_own_data_path() {
        let file = config_file("datapath: userspace\n");
        let Err(e) = pod_options(file.path(), None) else {
            panic!("a config with datapathProcess: agent was accepted");
        };
        let e = e.to_string();
        assert!(
            e.contains("datapathProcess") && e.contains("external"),
            "{e}"
        );
    }
}
