/**
 * The one rule that decides a relay's fate, kept pure so that a table test can cover every
 * combination of both sides' states and the bytes in flight.
 *
 * @module
 */

/**
 * What reading one side has given:
 * - `"open"`: its peer may still send;
 * - `"eof"`: its peer shut down its sending side (a read returned 0);
 * - `"broken"`: a read failed (reset or another error); nothing can be sent to it either.
 */
export type ReadState = "open" | "eof" | "broken";

/** What is known of one side. */
export interface SideView {
  /** What reading it has given. */
  read: ReadState;
  /** `false` once a write to it failed: its peer takes no more bytes. */
  writable: boolean;
}

/** What the relay does next. */
export interface RelayDecision {
  /** Whether the relay keeps running (moving bytes, or lingering). */
  open: boolean;
  /** Shut down `a`'s sending side now: everything `b` sent has reached `a`, and `b` is done. */
  shutdownA: boolean;
  /** Shut down `b`'s sending side now: everything `a` sent has reached `b`, and `a` is done. */
  shutdownB: boolean;
  /** Read `a` and drop the bytes: `b` can take none, and `a` must not be closed with unread data. */
  discardA: boolean;
  /** Read `b` and drop the bytes: `a` can take none. */
  discardB: boolean;
  /**
   * Nothing more can be delivered, but a side being drained may not be closed yet: closing a
   * socket with unread bytes makes the kernel send a reset, which destroys what its peer has
   * not acknowledged. The caller ends the relay once those send queues are empty (or at a
   * linger timeout).
   */
  lingering: boolean;
}

/**
 * Decides from both sides and the bytes in flight each way:
 * - a direction delivers while its source may send or bytes are in flight, and its
 *   destination can take them;
 * - end of input is forwarded as a shutdown of the other side's sending half only once every
 *   byte in flight that way is delivered, so a half-close never loses data;
 * - a side that cannot take bytes (a failed write, or broken) turns the direction toward it
 *   into a drain: its source is read and the bytes dropped, so that it is not closed with
 *   unread data while the other direction goes on delivering what its peer sent before failing;
 * - the relay ends when no direction can deliver anything and no side is being drained, or
 *   lingers (see {@linkcode RelayDecision.lingering}).
 */
export function decideRelay(
  a: SideView,
  b: SideView,
  inFlightAToB: number,
  inFlightBToA: number,
): RelayDecision {
  const aTakes = a.writable && a.read !== "broken";
  const bTakes = b.writable && b.read !== "broken";
  const aToB = bTakes && (a.read === "open" || inFlightAToB > 0);
  const bToA = aTakes && (b.read === "open" || inFlightBToA > 0);
  const discardA = !bTakes && a.read === "open";
  const discardB = !aTakes && b.read === "open";
  const lingering = !aToB && !bToA && (discardA || discardB);
  return {
    open: aToB || bToA || lingering,
    shutdownA: aTakes && b.read !== "open" && inFlightBToA === 0,
    shutdownB: bTakes && a.read !== "open" && inFlightAToB === 0,
    discardA,
    discardB,
    lingering,
  };
}
