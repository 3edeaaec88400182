/**
 * A ClientHello to route by, for the benchmark and the tests (not shipped).
 *
 * @module
 */

/**
 * A minimal TLS 1.2-style ClientHello record naming `serverName` (one cipher suite, the
 * server_name extension only): enough for proxy.ts's and HAProxy's SNI routing, which read it
 * and pass it on; an echo server sends it back like any bytes.
 */
export function clientHello(serverName: string): Uint8Array {
  const u16 = (n: number): number[] => [n >> 8, n & 255];
  const name = [...new TextEncoder().encode(serverName)];
  const list = [0, ...u16(name.length), ...name]; // host_name entry
  const extension = [0, 0, ...u16(list.length + 2), ...u16(list.length), ...list];
  const body = [
    3,
    3, // legacy_version TLS 1.2
    ...new Array(32).fill(7), // random
    0, // session_id
    ...u16(2),
    0x13,
    0x01, // cipher_suites: TLS_AES_128_GCM_SHA256
    1,
    0, // compression_methods: null
    ...u16(extension.length),
    ...extension,
  ];
  const handshake = [1, body.length >> 16, (body.length >> 8) & 255, body.length & 255, ...body];
  return Uint8Array.from([22, 3, 1, ...u16(handshake.length), ...handshake]);
}
