/**
 * Controls over a connected socket that Deno has no API for: its pending error, how many bytes
 * its peer has not acknowledged yet, and an abortive end (a TCP reset) that leaves the fd open.
 *
 * @module
 */

import { AF_UNSPEC, SIOCOUTQ, SO_ERROR, SOL_SOCKET } from "./constants.ts";
import { ERRNO, libc } from "./libc.ts";

const queued = new Int32Array(1);
const errorValue = new Int32Array(1);
const errorLength = new Uint32Array(1);

/**
 * The pending error of socket `fd` (`SO_ERROR`, which reading clears): 0 for none, else its
 * errno; the errno of getsockopt itself when that fails (a closed fd, not a socket).
 */
export function socketError(fd: number): number {
  errorLength[0] = 4;
  const ok = libc().getsockopt(fd, SOL_SOCKET, SO_ERROR, errorValue, errorLength) === 0;
  return ok ? errorValue[0] : ERRNO.cell[0];
}

/**
 * How often a reset that waits for acknowledgements looks at {@linkcode unackedBytes} again:
 * acks raise no readiness event unless a send had filled the buffer, so they are polled.
 */
export const ACK_POLL_MS = 20;

/**
 * Bytes sent on `fd` that its peer has not acknowledged yet; 0 when unknown (not a TCP socket,
 * or already closed). Once this is 0, a reset destroys nothing the peer was sent: its kernel
 * holds every byte, and a reset received after them is reported only after they are read.
 */
export function unackedBytes(fd: number): number {
  return libc().ioctl(fd, SIOCOUTQ, queued) === 0 ? queued[0] : 0;
}

/** `struct sockaddr` with `sa_family = AF_UNSPEC`; long enough for any family's length check. */
const UNSPEC = new Uint8Array(16);
new DataView(UNSPEC.buffer).setUint16(0, AF_UNSPEC, true);

/**
 * Ends the TCP connection on `fd` with a reset, now, without closing the fd.
 *
 * A relay passes a peer's reset on as a reset: closing the other side normally would send a FIN,
 * and a truncated stream would look complete. `connect()` with an `AF_UNSPEC` address dissolves
 * the association (the kernel's `tcp_disconnect`): an established connection gets an RST and the
 * socket is left unconnected. The usual `SO_LINGER` zero-timeout close cannot serve here,
 * because a Deno conn's `close()` shuts the sending side down first, and that FIN would reach
 * the peer before the reset. The owner still closes the fd afterwards; on a socket that is no
 * longer connected that sends nothing more.
 *
 * @returns whether the kernel took it (`false` for a socket that is not TCP, or not connected)
 */
export function resetConnection(fd: number): boolean {
  return libc().connect(fd, UNSPEC, UNSPEC.byteLength) === 0;
}
