//! Files in directories that belong to someone else (the database user's
//! data directory), read and written without following links.
//!
//! vigil may run as root; the database user owns the data directory and
//! can plant a symbolic link (`standby.signal -> /etc/shadow`) or a hard
//! link there. Every file vigil writes in such a directory is created
//! relative to the directory under a fresh name (`O_EXCL | O_NOFOLLOW`),
//! given to the directory's owner through its descriptor (`fchown`, never
//! a path) and renamed into place, which replaces a planted link instead
//! of following it; reads do not follow links either.

use anyhow::{bail, Context, Result};
use rustix::fs::{FileType, Mode, OFlags};
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::Path;

fn open_dir(dir: &Path) -> Result<OwnedFd> {
    rustix::fs::open(dir, OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty())
        .with_context(|| format!("open directory {}", dir.display()))
}

/// The checks every file must pass: a regular file with one link.
fn check_regular(fd: &OwnedFd, dir: &Path, name: &str) -> Result<rustix::fs::Stat> {
    let st = rustix::fs::fstat(fd)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
        bail!("{}/{name} is not a regular file; not touching it", dir.display());
    }
    if st.st_nlink > 1 {
        bail!("{}/{name} has {} hard links; not touching it", dir.display(), st.st_nlink);
    }
    Ok(st)
}

fn plain_name(name: &str) -> Result<()> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        bail!("{name:?} is not a plain file name");
    }
    Ok(())
}

/// Writes `content` to `dir/name`, owned like the directory. The file is
/// written under a temporary name created exclusively (no link can be in
/// its way) and renamed over `name`, which replaces whatever was there (a
/// file, or a planted link) without touching what a link pointed to, as
/// PostgreSQL itself replaces `postgresql.auto.conf`.
pub fn write_in(dir: &Path, name: &str, content: &[u8]) -> Result<()> {
    plain_name(name)?;
    let d = open_dir(dir)?;
    let owner = rustix::fs::fstat(&d)?;
    let tmp = format!(".{name}.vigil-{}", std::process::id());
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = match rustix::fs::openat(&d, tmp.as_str(), flags, Mode::from_raw_mode(0o600)) {
        Err(rustix::io::Errno::EXIST) => {
            // Left by an earlier attempt (or planted): remove the name, not
            // what it may point to, and try once more.
            rustix::fs::unlinkat(&d, tmp.as_str(), rustix::fs::AtFlags::empty())?;
            rustix::fs::openat(&d, tmp.as_str(), flags, Mode::from_raw_mode(0o600))
        }
        r => r,
    }
    .with_context(|| format!("create {}/{tmp}", dir.display()))?;
    if rustix::process::geteuid().is_root() {
        let (uid, gid) = (rustix::fs::Uid::from_raw(owner.st_uid), rustix::fs::Gid::from_raw(owner.st_gid));
        rustix::fs::fchown(&fd, Some(uid), Some(gid)).with_context(|| format!("give {}/{tmp} to the directory's owner", dir.display()))?;
    }
    let mut f = std::fs::File::from(fd);
    f.write_all(content).and_then(|_| f.sync_all()).with_context(|| format!("write {}/{tmp}", dir.display()))?;
    rustix::fs::renameat(&d, tmp.as_str(), &d, name).with_context(|| format!("rename {}/{tmp} to {name}", dir.display()))?;
    Ok(())
}

/// Reads `dir/name`; Ok(None) if it does not exist, or if it is not a
/// regular file of its own (a link, a FIFO: what it points to is never
/// read, and the name is replaced on the next write).
pub fn read_in(dir: &Path, name: &str) -> Result<Option<String>> {
    plain_name(name)?;
    let d = open_dir(dir)?;
    let fd = match rustix::fs::openat(&d, name, OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK, Mode::empty()) {
        Ok(fd) => fd,
        Err(rustix::io::Errno::NOENT) => return Ok(None),
        Err(rustix::io::Errno::LOOP) => {
            tracing::warn!(path = %dir.join(name).display(), "a symbolic link where a file should be: not followed, and replaced");
            return Ok(None);
        }
        Err(e) => return Err(e).with_context(|| format!("open {}/{name}", dir.display())),
    };
    if let Err(e) = check_regular(&fd, dir, name) {
        tracing::warn!(error = %format!("{e:#}"), "not read, and replaced on the next write");
        return Ok(None);
    }
    let mut text = String::new();
    std::fs::File::from(fd).read_to_string(&mut text).with_context(|| format!("read {}/{name}", dir.display()))?;
    Ok(Some(text))
}

/// Gives a directory vigil just created to `(uid, gid)` through a
/// descriptor opened without following links (the parent may belong to
/// the database user, who could swap the path for a link meanwhile).
pub fn chown_created_dir(path: &Path, uid: u32, gid: u32) -> Result<()> {
    let fd = rustix::fs::open(path, OFlags::DIRECTORY | OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC, Mode::empty())
        .with_context(|| format!("open {} (links are not followed)", path.display()))?;
    let (uid, gid) = (rustix::fs::Uid::from_raw(uid), rustix::fs::Gid::from_raw(gid));
    rustix::fs::fchown(&fd, Some(uid), Some(gid)).with_context(|| format!("chown {}", path.display()))?;
    rustix::fs::fchmod(&fd, Mode::from_raw_mode(0o700))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_and_reads_a_plain_file() {
        let dir = tempfile::tempdir().unwrap();
        write_in(dir.path(), "standby.signal", b"").unwrap();
        write_in(dir.path(), "postgresql.auto.conf", b"a = '1'\n").unwrap();
        write_in(dir.path(), "postgresql.auto.conf", b"b\n").unwrap();
        assert_eq!(read_in(dir.path(), "postgresql.auto.conf").unwrap().as_deref(), Some("b\n"));
        assert_eq!(read_in(dir.path(), "missing").unwrap(), None);
    }

    /// The reproduction from the hardening issue: a link planted by the
    /// database user in its data directory; root wrote through it and gave
    /// the target away.
    #[test]
    fn a_planted_symlink_or_hard_link_is_replaced_and_its_target_untouched() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let target = outside.path().join("root-owned");
        std::fs::write(&target, "precious").unwrap();
        let before = std::fs::metadata(&target).unwrap();
        std::os::unix::fs::symlink(&target, dir.path().join("standby.signal")).unwrap();
        assert_eq!(read_in(dir.path(), "standby.signal").unwrap(), None, "a link is not read through");
        write_in(dir.path(), "standby.signal", b"").unwrap();
        assert!(std::fs::symlink_metadata(dir.path().join("standby.signal")).unwrap().file_type().is_file());
        std::fs::hard_link(&target, dir.path().join("postgresql.auto.conf")).unwrap();
        assert_eq!(read_in(dir.path(), "postgresql.auto.conf").unwrap(), None, "a hard link is not read");
        write_in(dir.path(), "postgresql.auto.conf", b"x").unwrap();
        assert_eq!(std::fs::read_to_string(dir.path().join("postgresql.auto.conf")).unwrap(), "x");
        let after = std::fs::metadata(&target).unwrap();
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious");
        assert_eq!((after.uid(), after.gid(), after.mode()), (before.uid(), before.gid(), before.mode()));
        assert!(write_in(dir.path(), "../escape", b"x").is_err());
    }
}
