//! Integer socket options that the standard library does not expose.

use std::net::TcpStream;
use std::os::fd::AsRawFd;

/// Sets the integer socket option `name` at `level` (for example `libc::SOL_SOCKET`,
/// `libc::SO_SNDBUF`) on `stream`.
pub(crate) fn set_int(
    stream: &TcpStream,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> std::io::Result<()> {
    // SAFETY: the option value is a live c_int of the size passed, and the descriptor belongs
    // to `stream`, which outlives the call.
    let result = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if result == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}
