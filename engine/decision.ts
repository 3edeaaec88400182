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
   * End `a` with a reset: `b` failed (a reset, or another error), and everything `b` sent before
   * that has been handed to `a`. A FIN here would make a truncated stream look complete; the
   * reset is what the peer would have seen without the relay in between.
   */
  resetA: boolean;
  /** End `b` with a reset: `a` failed and everything it sent has been handed to `b`. */
  resetB: boolean;
  /**
   * Nothing more can be delivered, and a side is to be reset: a reset destroys what its peer
   * has not acknowledged yet, so the caller waits until those send queues are empty (or a linger
   * timeout), then resets and ends the relay.
   */
  lingering: boolean;
}

/**
 * Decides from both sides and the bytes in flight each way:
 * - a direction delivers while its source may send or bytes are in flight, and its
 *   destination can take them;
 * - end of input is forwarded as a shutdown of the other side's sending half only once every
 *   byte in flight that way is delivered, so a half-close never loses data;
 * - a side that fails (its read broke, or a write to it failed) takes no more bytes; what it
 *   sent before failing is still delivered, then its failure is passed on as a reset of the
 *   other side, never as a FIN;
 * - a side whose bytes can go nowhere is read and the bytes dropped while the other direction
 *   still delivers, so that its peer, blocked sending, gets to read what is delivered;
 * - the relay ends when no direction can deliver anything and no side is waiting to be reset,
 *   or lingers (see {@linkcode RelayDecision.lingering}).
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
  // A side that takes bytes has not failed; one that does not, has.
  const resetA = aTakes && !bTakes && !bToA;
  const resetB = bTakes && !aTakes && !aToB;
  const lingering = !aToB && !bToA && (resetA || resetB);
  return {
    open: aToB || bToA || lingering,
    shutdownA: aTakes && bTakes && b.read !== "open" && inFlightBToA === 0,
    shutdownB: bTakes && aTakes && a.read !== "open" && inFlightAToB === 0,
    discardA: !bTakes && a.read === "open",
    discardB: !aTakes && b.read === "open",
    resetA,
    resetB,
    lingering,
  };
}
