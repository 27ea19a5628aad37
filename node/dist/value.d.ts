/**
 * Typed cache values and session data: any JavaScript value stored as MessagePack.
 *
 * shoald never looks inside values; bytes are opaque to it. The typed helpers
 * (`Client.get` / `set` / `mget` / `getOrLoad`, session data) encode with
 * MessagePack the way the Rust client's typed API (`rmp_serde::to_vec_named`)
 * does, so a value one writes the other reads:
 *
 * | Rust (serde)                         | MessagePack            | JavaScript               |
 * |--------------------------------------|------------------------|--------------------------|
 * | struct with named fields             | map, field names as str| plain object             |
 * | `Vec<T>`, tuple, tuple struct        | array                  | array                    |
 * | `HashMap<String, T>` / `BTreeMap`    | map                    | plain object             |
 * | `String`, `char`                     | str                    | string                   |
 * | integers                             | smallest int format    | number (`bigint` beyond 2^53 is lossy; see below) |
 * | `f64` / `f32`                        | float 64 / float 32    | number                   |
 * | `bool`                               | bool                   | boolean                  |
 * | `Option::None`, `()`                 | nil                    | `null`                   |
 * | unit enum variant                    | str (variant name)     | string                   |
 * | newtype/struct variant               | map `{Variant: value}` | `{ Variant: value }`     |
 * | `serde_bytes` / `bytes::Bytes`       | bin                    | `Uint8Array`             |
 * | `Vec<u8>` (without `serde_bytes`)    | array of ints          | array of numbers         |
 *
 * Caveats: a JavaScript number with no fraction encodes as an integer, which serde
 * accepts for `f64` fields; `undefined` object fields are left out (serde's
 * `Option` fields need `#[serde(default)]` to accept a missing field, or send
 * `null`); a `Date` encodes as the MessagePack timestamp extension, which
 * rmp-serde does not read (store epoch milliseconds instead); integers above
 * 2^53 decode as imprecise numbers.
 */
/** Encodes `value` as the bytes of a cache value or session data. */
export declare function encodeValue(value: unknown): Buffer;
/** Decodes the bytes of a cache value or session data. */
export declare function decodeValue<T = unknown>(bytes: Uint8Array): T;
