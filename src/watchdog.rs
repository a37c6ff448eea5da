//! Watchdogs that outlive a frozen sidecar.
//!
//! - The node watchdog (`[watchdog]`, as Patroni's `watchdog.mode`): a
//!   Linux watchdog device (`/dev/watchdog`, hardware or `softdog`) armed
//!   only while this node holds the leader lease and fed at each renewal,
//!   with a timeout of `ttl - safety_margin`. A node whose sidecar froze is
//!   reset before its lease can expire, so before another node may promote.
//!   When to arm, feed and disarm is decided in `core::watchdog`.
//! - systemd's watchdog for the process (`Type=notify`, `WatchdogSec=`):
//!   `READY=1` once the sidecar runs, `WATCHDOG=1` from the loop, so that a
//!   loop stuck for `WatchdogSec` gets the sidecar restarted.

use crate::config::{WatchdogConfig, WatchdogMode};
use crate::core::watchdog::{self, LeaseEvent, WatchdogStep};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `WDIOC_SETTIMEOUT`: `_IOWR('W', 6, int)` in linux/watchdog.h.
const WDIOC_SETTIMEOUT: u64 = 0xC004_5706;

/// Where the node watchdog's bytes go: the Linux device (`FileDevice`), or
/// the simulation's model of one (`sim::world`).
pub trait WatchdogDevice: Send {
    /// Opens the device (it starts counting) with `timeout_s`.
    fn open(&mut self, timeout_s: u32) -> anyhow::Result<()>;
    /// `b"1"` feeds it; `b"V"` (the magic character) lets the next close
    /// stop it.
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()>;
    /// Closes it: stopped after a magic character, still counting
    /// otherwise.
    fn close(&mut self);
}

/// A Linux watchdog device file, or a plain file standing in for one in
/// tests (it only records what is written).
pub struct FileDevice {
    path: PathBuf,
    file: Option<File>,
}

impl FileDevice {
    pub fn new(path: &Path) -> FileDevice {
        FileDevice { path: path.to_path_buf(), file: None }
    }
}

impl WatchdogDevice for FileDevice {
    fn open(&mut self, timeout_s: u32) -> anyhow::Result<()> {
        // Append: a device ignores it; the fake device keeps every write.
        let mut f = std::fs::OpenOptions::new().append(true).open(&self.path)?;
        if std::os::unix::fs::FileTypeExt::is_char_device(&f.metadata()?.file_type()) {
            let mut t: libc::c_int = timeout_s as libc::c_int;
            // SAFETY: the fd is open for the call's duration and `t` is a
            // valid c_int the driver reads and writes back.
            let r = unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&f), WDIOC_SETTIMEOUT as _, &mut t) };
            if r != 0 {
                let e = std::io::Error::last_os_error();
                // Leave the device as it was: stop it before reporting.
                let _ = f.write_all(b"V");
                anyhow::bail!("setting the timeout to {timeout_s}s: {e}");
            }
            if t as u32 != timeout_s {
                tracing::warn!(asked = timeout_s, got = t, "the watchdog device chose another timeout");
            }
        }
        self.file = Some(f);
        Ok(())
    }

    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self.file.as_mut() {
            Some(f) => f.write_all(bytes),
            None => Err(std::io::Error::other("not open")),
        }
    }

    fn close(&mut self) {
        self.file = None;
    }
}

/// The node watchdog as this sidecar drives it.
pub struct NodeWatchdog {
    mode: WatchdogMode,
    /// Shown in logs.
    name: String,
    device: Box<dyn WatchdogDevice>,
    /// Seconds; `None` when ttl and safety margin leave too little (the
    /// config refuses that with the watchdog on).
    timeout: Option<u32>,
    safety_margin: Duration,
    armed: bool,
    /// The last arming failure, logged once until arming works again.
    failure: Option<String>,
}

impl NodeWatchdog {
    /// The device the config names.
    pub fn new(cfg: &WatchdogConfig, ttl: Duration, safety_margin: Duration, loop_wait: Duration) -> NodeWatchdog {
        let name = cfg.device.display().to_string();
        Self::with_device(cfg.mode, name, Box::new(FileDevice::new(&cfg.device)), ttl, safety_margin, loop_wait)
    }

    pub fn with_device(
        mode: WatchdogMode,
        name: String,
        device: Box<dyn WatchdogDevice>,
        ttl: Duration,
        safety_margin: Duration,
        loop_wait: Duration,
    ) -> NodeWatchdog {
        NodeWatchdog {
            mode,
            name,
            device,
            timeout: watchdog::timeout(ttl, safety_margin, loop_wait),
            safety_margin,
            armed: false,
            failure: None,
        }
    }

    pub fn armed(&self) -> bool {
        self.armed
    }

    /// The lease changed: arm, feed or disarm as the core decides.
    pub fn on(&mut self, event: LeaseEvent) {
        if self.mode == WatchdogMode::Off {
            return;
        }
        match watchdog::step(event, self.armed, self.safety_margin) {
            WatchdogStep::Arm => match self.arm() {
                Ok(()) => {
                    tracing::info!(device = %self.name, timeout_s = ?self.timeout, "watchdog armed: this node resets if the lease is not renewed in time");
                    self.armed = true;
                    self.failure = None;
                    self.feed();
                }
                Err(e) => {
                    let e = format!("{e:#}");
                    if self.failure.as_deref() != Some(e.as_str()) {
                        // Required: the operator asked that a leader be
                        // guarded; say so loudly. Automatic: go on unguarded.
                        match self.mode {
                            WatchdogMode::Required => {
                                tracing::error!(device = %self.name, error = %e, "watchdog required but it cannot be armed: this leader is not guarded against a frozen sidecar")
                            }
                            _ => tracing::warn!(device = %self.name, error = %e, "watchdog not available; leading without it"),
                        }
                        self.failure = Some(e);
                    }
                }
            },
            WatchdogStep::Feed => self.feed(),
            WatchdogStep::Disarm => self.disarm(),
            WatchdogStep::Nothing => {}
        }
    }

    fn arm(&mut self) -> anyhow::Result<()> {
        let timeout = self.timeout.ok_or_else(|| anyhow::anyhow!("ttl - safety_margin leaves less than two loops for the timeout"))?;
        self.device.open(timeout)
    }

    fn feed(&mut self) {
        if let Err(e) = self.device.write(b"1") {
            tracing::error!(error = %e, "could not feed the watchdog");
        }
    }

    /// Magic close: the device stops counting.
    fn disarm(&mut self) {
        self.armed = false;
        match self.device.write(b"V") {
            Ok(()) => tracing::info!(device = %self.name, "watchdog disarmed: this node no longer leads"),
            Err(e) => tracing::error!(error = %e, "could not disarm the watchdog"),
        }
        self.device.close();
    }
}

/// A sidecar that goes away while leading (killed, crashed, or stopped)
/// closes the device without the magic character: it keeps counting, and
/// the node is reset unless a sidecar comes back and feeds it in time. A
/// primary must not outlive its supervisor's lease.
impl Drop for NodeWatchdog {
    fn drop(&mut self) {
        self.device.close();
    }
}

/// Can the device be used? Checked at start without opening it (opening
/// starts the countdown on most drivers).
pub fn preflight(device: &Path) -> Result<(), String> {
    let meta = std::fs::metadata(device).map_err(|e| format!("{}: {e}", device.display()))?;
    let ft = meta.file_type();
    if !std::os::unix::fs::FileTypeExt::is_char_device(&ft) && !ft.is_file() {
        return Err(format!("{} is not a watchdog device", device.display()));
    }
    rustix::fs::access(device, rustix::fs::Access::WRITE_OK)
        .map_err(|e| format!("{}: not writable by this user ({e}); give it to the database user with a udev rule", device.display()))
}

/// Sends `state` to systemd when it started this process with
/// `Type=notify` (`NOTIFY_SOCKET` set); otherwise does nothing.
pub fn sd_notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let Ok(sock) = std::os::unix::net::UnixDatagram::unbound() else { return };
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
    let sent = match bytes.strip_prefix(b"@") {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(name).and_then(|a| sock.send_to_addr(state.as_bytes(), &a))
        }
        None => sock.send_to(state.as_bytes(), &path),
    };
    if let Err(e) = sent {
        tracing::debug!(error = %e, "sd_notify");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake(mode: WatchdogMode) -> (tempfile::TempDir, PathBuf, NodeWatchdog) {
        let dir = tempfile::tempdir().unwrap();
        let dev = dir.path().join("watchdog");
        std::fs::write(&dev, "").unwrap();
        let cfg = WatchdogConfig { mode, device: dev.clone() };
        let wd = NodeWatchdog::new(&cfg, Duration::from_secs(10), Duration::from_secs(2), Duration::from_secs(1));
        (dir, dev, wd)
    }

    fn renewed(ms: u64) -> LeaseEvent {
        LeaseEvent::Renewed { answer_delay: Duration::from_millis(ms) }
    }

    /// Armed at the first renewal, fed at each, disarmed with the magic
    /// character when the lease goes; a late answer feeds nothing.
    #[test]
    fn a_fake_device_sees_arm_feed_and_magic_close() {
        let (_dir, dev, mut wd) = fake(WatchdogMode::Automatic);
        wd.on(LeaseEvent::Dropped);
        assert!(!wd.armed());
        assert_eq!(std::fs::read_to_string(&dev).unwrap(), "");
        wd.on(renewed(5));
        assert!(wd.armed());
        wd.on(renewed(5));
        wd.on(renewed(2500));
        wd.on(renewed(1900));
        assert_eq!(std::fs::read_to_string(&dev).unwrap(), "111");
        wd.on(LeaseEvent::Dropped);
        assert!(!wd.armed());
        assert_eq!(std::fs::read_to_string(&dev).unwrap(), "111V");
        wd.on(renewed(5));
        drop(wd);
        assert_eq!(std::fs::read_to_string(&dev).unwrap(), "111V1", "a sidecar that goes away leaves it counting (no magic close)");
    }

    #[test]
    fn off_touches_nothing_and_a_missing_device_is_survived() {
        let (_dir, dev, _) = fake(WatchdogMode::Automatic);
        let mut off = NodeWatchdog::new(
            &WatchdogConfig { mode: WatchdogMode::Off, device: dev.clone() },
            Duration::from_secs(10),
            Duration::from_secs(2),
            Duration::from_secs(1),
        );
        off.on(renewed(5));
        assert!(!off.armed());
        assert_eq!(std::fs::read_to_string(&dev).unwrap(), "");
        let mut missing = NodeWatchdog::new(
            &WatchdogConfig { mode: WatchdogMode::Required, device: dev.with_file_name("absent") },
            Duration::from_secs(10),
            Duration::from_secs(2),
            Duration::from_secs(1),
        );
        missing.on(renewed(5));
        missing.on(renewed(5));
        assert!(!missing.armed());
    }

    #[test]
    fn preflight_names_the_problem() {
        let (dir, dev, _) = fake(WatchdogMode::Automatic);
        assert!(preflight(&dev).is_ok());
        assert!(preflight(&dir.path().join("absent")).unwrap_err().contains("absent"));
        assert!(preflight(dir.path()).unwrap_err().contains("not a watchdog device"));
    }

    #[test]
    fn sd_notify_reaches_a_listening_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let listener = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        // This test is the only one that sets NOTIFY_SOCKET.
        std::env::set_var("NOTIFY_SOCKET", &path);
        sd_notify("WATCHDOG=1");
        std::env::remove_var("NOTIFY_SOCKET");
        let mut buf = [0u8; 64];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"WATCHDOG=1");
    }
}
