/**
 * The one rule that decides a relay's fate, kept pure so that a table test can cover every
 * combination of both sides' states and the bytes in flight.
 *
 * @module
 */

/**
 * What is known of one side's socket:
 * - `"open"`: its peer may still send;
 * - `"eof"`: its peer shut down its sending side (a read returned 0);
 * - `"broken"`: a read or write failed (reset, broken pipe, any other error).
 */
export type SideState = "open" | "eof" | "broken";

/** What the relay does next. */
export interface RelayDecision {
  /** Whether the relay keeps running. */
  open: boolean;
  /** Shut down `a`'s sending side now: `b` finished and everything it sent reached `a`. */
  shutdownA: boolean;
  /** Shut down `b`'s sending side now: `a` finished and everything it sent reached `b`. */
  shutdownB: boolean;
}

/**
 * Decides from both sides' states and the bytes in flight each way:
 * - a broken side ends the relay at once (what is in flight toward it can no longer arrive,
 *   and the caller reports the failure with the bytes delivered so far);
 * - end of input on one side is forwarded as a shutdown of the other side's sending half only
 *   once every byte in flight that way is delivered, so a half-close never loses data;
 * - the relay ends when both directions have finished and drained.
 */
export function decideRelay(
  a: SideState,
  b: SideState,
  inFlightAToB: number,
  inFlightBToA: number,
): RelayDecision {
  if (a === "broken" || b === "broken") {
    return { open: false, shutdownA: false, shutdownB: false };
  }
  const shutdownB = a === "eof" && inFlightAToB === 0;
  const shutdownA = b === "eof" && inFlightBToA === 0;
  return { open: !(shutdownA && shutdownB), shutdownA, shutdownB };
}
