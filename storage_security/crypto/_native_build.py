"""Build the optional native bulk AES-256-GCM / SHA-256 helpers (:mod:`storage_security.crypto._native`).

``make install`` runs ``python -m storage_security.crypto._native_build``: cffi compiles the C below against the
system's OpenSSL (``libcrypto``; Debian's ``gcc`` and ``libssl-dev``) into this package. Where that cannot be
built, medguard runs the same cell format and record hashes through ``cryptography`` and ``hmac`` one cell at a
time (:mod:`storage_security.crypto._bulk`), and says so in the benchmarks.

Why C at all: a sealed cell costs ``cryptography`` one Python call (about 0.45 µs, with the GIL held) plus the
per-cell glue around it; at 100,000 patients that was a third of ingestion. These loops do the same OpenSSL
calls over whole Arrow buffers, without the GIL. They make no choices of their own: the nonces come from
``os.urandom`` in Python, the keys, headers, contexts and offsets are laid out and bounds-checked by the caller.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

CDEF = """
int mg_seal(const unsigned char *keys, const unsigned char *headers, size_t header_size,
            const unsigned char *contexts, const int64_t *key_index, const unsigned char *nonces, size_t n,
            const int64_t *pt_off, const unsigned char *pt_data, const int64_t *rk_off,
            const unsigned char *rk_data, const int64_t *out_off, unsigned char *out_data);
int64_t mg_open(const unsigned char *keys, const unsigned char *contexts, const int64_t *key_index, size_t n,
                const int64_t *cell_off, const int64_t *head, const unsigned char *cell_data,
                const int64_t *rk_off, const unsigned char *rk_data, const int64_t *out_off,
                unsigned char *out_data);
int mg_contexts(const unsigned char *prefix, size_t prefix_size, const unsigned char *headers,
                size_t header_size, size_t n, unsigned char *out);
int mg_hmac_hex(const unsigned char *inner_block, size_t inner_size, const unsigned char *outer_block,
                size_t n, const int64_t *off, const unsigned char *data, unsigned char *out_hex);
int mg_framed_hmac_hex(const unsigned char *inner_block, size_t inner_size, const unsigned char *outer_block,
                       size_t columns, const int64_t **offsets, const unsigned char **data,
                       const unsigned char **valid, size_t n, unsigned char *out_hex);
"""

SOURCE = r"""
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#define OPENSSL_SUPPRESS_DEPRECATED
#include <openssl/evp.h>
#include <openssl/sha.h>

#define MG_KEY 32
#define MG_NONCE 12
#define MG_TAG 16
#define MG_CONTEXT 16

/* out[i] = header[k] || nonce[i] || AES-256-GCM_k(nonce[i], aad = context[k] || row_key[i], plaintext[i]) || tag,
   k = key_index[i] (0 for every cell when key_index is NULL). Returns 0, or -1 when OpenSSL fails. */
int mg_seal(const unsigned char *keys, const unsigned char *headers, size_t header_size,
            const unsigned char *contexts, const int64_t *key_index, const unsigned char *nonces, size_t n,
            const int64_t *pt_off, const unsigned char *pt_data, const int64_t *rk_off,
            const unsigned char *rk_data, const int64_t *out_off, unsigned char *out_data)
{
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    int rc = -1, len = 0;
    int64_t previous = -1;
    if (ctx == NULL || EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, NULL, NULL) != 1) goto done;
    for (size_t i = 0; i < n; i++) {
        int64_t k = key_index ? key_index[i] : 0;
        const unsigned char *nonce = nonces + MG_NONCE * i;
        unsigned char *out = out_data + out_off[i];
        int64_t pt_size = pt_off[i + 1] - pt_off[i], rk_size = rk_off[i + 1] - rk_off[i];
        /* The key schedule only when the key changes (a patient's cells are usually adjacent). */
        if (EVP_EncryptInit_ex(ctx, NULL, NULL, k != previous ? keys + MG_KEY * k : NULL, nonce) != 1) goto done;
        previous = k;
        memcpy(out, headers + header_size * k, header_size);
        out += header_size;
        memcpy(out, nonce, MG_NONCE);
        out += MG_NONCE;
        if (EVP_EncryptUpdate(ctx, NULL, &len, contexts + MG_CONTEXT * k, MG_CONTEXT) != 1) goto done;
        if (rk_size > 0 && EVP_EncryptUpdate(ctx, NULL, &len, rk_data + rk_off[i], (int)rk_size) != 1) goto done;
        if (pt_size > 0) {
            if (EVP_EncryptUpdate(ctx, out, &len, pt_data + pt_off[i], (int)pt_size) != 1 || len != pt_size)
                goto done;
            out += pt_size;
        }
        if (EVP_EncryptFinal_ex(ctx, out, &len) != 1 || len != 0) goto done;
        if (EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, MG_TAG, out) != 1) goto done;
    }
    rc = 0;
done:
    EVP_CIPHER_CTX_free(ctx);
    return rc;
}

/* The plaintext of each cell (header of head[i] bytes, nonce, ciphertext, tag) under key_index[i], into
   out_data at out_off[i]. Returns -1 when every cell verifies, the index of the first that does not, or -2
   when OpenSSL fails. */
int64_t mg_open(const unsigned char *keys, const unsigned char *contexts, const int64_t *key_index, size_t n,
                const int64_t *cell_off, const int64_t *head, const unsigned char *cell_data,
                const int64_t *rk_off, const unsigned char *rk_data, const int64_t *out_off,
                unsigned char *out_data)
{
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    int64_t rc = -2, previous = -1;
    int len = 0;
    if (ctx == NULL || EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, NULL, NULL) != 1) goto done;
    for (size_t i = 0; i < n; i++) {
        int64_t k = key_index[i];
        const unsigned char *cell = cell_data + cell_off[i] + head[i];
        int64_t ct_size = cell_off[i + 1] - cell_off[i] - head[i] - MG_NONCE - MG_TAG;
        int64_t rk_size = rk_off[i + 1] - rk_off[i];
        unsigned char tag[MG_TAG];
        if (ct_size < 0) { rc = (int64_t)i; goto done; }
        if (EVP_DecryptInit_ex(ctx, NULL, NULL, k != previous ? keys + MG_KEY * k : NULL, cell) != 1) goto done;
        previous = k;
        cell += MG_NONCE;
        if (EVP_DecryptUpdate(ctx, NULL, &len, contexts + MG_CONTEXT * k, MG_CONTEXT) != 1) goto done;
        if (rk_size > 0 && EVP_DecryptUpdate(ctx, NULL, &len, rk_data + rk_off[i], (int)rk_size) != 1) goto done;
        if (ct_size > 0) {
            if (EVP_DecryptUpdate(ctx, out_data + out_off[i], &len, cell, (int)ct_size) != 1 || len != ct_size)
                goto done;
        }
        memcpy(tag, cell + ct_size, MG_TAG);
        if (EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, MG_TAG, tag) != 1) goto done;
        if (EVP_DecryptFinal_ex(ctx, out_data + out_off[i] + ct_size, &len) != 1) {
            memset(out_data + out_off[i], 0, (size_t)ct_size);  /* nothing unauthenticated is left behind */
            rc = (int64_t)i;
            goto done;
        }
    }
    rc = -1;
done:
    EVP_CIPHER_CTX_free(ctx);
    return rc;
}

/* The first 16 bytes of SHA-256(prefix || header[j]) for each of n headers. Returns 0. */
int mg_contexts(const unsigned char *prefix, size_t prefix_size, const unsigned char *headers,
                size_t header_size, size_t n, unsigned char *out)
{
    SHA256_CTX base, ctx;
    unsigned char digest[SHA256_DIGEST_LENGTH];
    SHA256_Init(&base);
    SHA256_Update(&base, prefix, prefix_size);
    for (size_t j = 0; j < n; j++) {
        ctx = base;
        SHA256_Update(&ctx, headers + header_size * j, header_size);
        SHA256_Final(digest, &ctx);
        memcpy(out + MG_CONTEXT * j, digest, MG_CONTEXT);
    }
    return 0;
}

/* HMAC-SHA256 with the key's inner and outer states computed once: each row then costs a struct copy and
   the hashing itself (the EVP digest copies allocate, and cost more than hashing a short row). OpenSSL 3 marks
   the SHA256_* functions deprecated, not removed; they are what its EVP SHA-256 runs underneath. */
static void mg_finish_hex(SHA256_CTX *ctx, const SHA256_CTX *outer, unsigned char *out_hex)
{
    static const char digits[] = "0123456789abcdef";
    unsigned char digest[SHA256_DIGEST_LENGTH];
    SHA256_Final(digest, ctx);
    *ctx = *outer;
    SHA256_Update(ctx, digest, SHA256_DIGEST_LENGTH);
    SHA256_Final(digest, ctx);
    for (int b = 0; b < SHA256_DIGEST_LENGTH; b++) {
        out_hex[2 * b] = digits[digest[b] >> 4];
        out_hex[2 * b + 1] = digits[digest[b] & 15];
    }
}

static void mg_states(const unsigned char *inner_block, size_t inner_size, const unsigned char *outer_block,
                      SHA256_CTX *inner, SHA256_CTX *outer)
{
    SHA256_Init(inner);
    SHA256_Update(inner, inner_block, inner_size);
    SHA256_Init(outer);
    SHA256_Update(outer, outer_block, 64);
}

/* Like mg_hmac_hex over rows framed from columns of text: each value as <code points>:<UTF-8 bytes>, a null
   (valid[c] non-NULL and valid[c][i] == 0) as one NUL byte, the columns in order. Returns 0, or -1 when out
   of memory. */
int mg_framed_hmac_hex(const unsigned char *inner_block, size_t inner_size, const unsigned char *outer_block,
                       size_t columns, const int64_t **offsets, const unsigned char **data,
                       const unsigned char **valid, size_t n, unsigned char *out_hex)
{
    SHA256_CTX inner, outer, ctx;
    unsigned char *row = NULL;
    size_t capacity = 0;
    mg_states(inner_block, inner_size, outer_block, &inner, &outer);
    for (size_t i = 0; i < n; i++) {
        size_t need = 0, at = 0;
        for (size_t c = 0; c < columns; c++)
            need += (size_t)(offsets[c][i + 1] - offsets[c][i]) + 24;
        if (need > capacity) {
            unsigned char *grown = realloc(row, need * 2);
            if (grown == NULL) {
                free(row);
                return -1;
            }
            row = grown;
            capacity = need * 2;
        }
        for (size_t c = 0; c < columns; c++) {
            if (valid[c] != NULL && !valid[c][i]) {
                row[at++] = 0;
                continue;
            }
            const unsigned char *text = data[c] + offsets[c][i];
            size_t size = (size_t)(offsets[c][i + 1] - offsets[c][i]), points = 0;
            for (size_t b = 0; b < size; b++)
                points += (text[b] & 0xC0) != 0x80;
            char digits[24];
            int width = 0;
            do {
                digits[width++] = (char)('0' + points % 10);
                points /= 10;
            } while (points);
            while (width)
                row[at++] = (unsigned char)digits[--width];
            row[at++] = ':';
            memcpy(row + at, text, size);
            at += size;
        }
        ctx = inner;
        SHA256_Update(&ctx, row, at);
        mg_finish_hex(&ctx, &outer, out_hex + 64 * i);
    }
    free(row);
    return 0;
}

/* HMAC-SHA256 of each row as 64 lowercase hex digits: SHA-256(outer_block || SHA-256(inner_block || row)),
   the blocks being the key XOR opad / ipad (inner_block may carry a fixed message prefix after it). */
int mg_hmac_hex(const unsigned char *inner_block, size_t inner_size, const unsigned char *outer_block,
                size_t n, const int64_t *off, const unsigned char *data, unsigned char *out_hex)
{
    SHA256_CTX inner, outer, ctx;
    mg_states(inner_block, inner_size, outer_block, &inner, &outer);
    for (size_t i = 0; i < n; i++) {
        ctx = inner;
        SHA256_Update(&ctx, data + off[i], (size_t)(off[i + 1] - off[i]));
        mg_finish_hex(&ctx, &outer, out_hex + 64 * i);
    }
    return 0;
}
"""


def build() -> Path:
    """Compile the module into this package; returns the built file."""
    import tempfile

    from cffi import FFI

    ffi = FFI()
    ffi.cdef(CDEF)
    ffi.set_source("storage_security.crypto._native", SOURCE, libraries=["crypto"],
                   extra_compile_args=["-O2", "-Wall", "-Werror"])
    package = Path(__file__).resolve().parent
    with tempfile.TemporaryDirectory(prefix="medguard-native-") as tmp:
        built = Path(ffi.compile(tmpdir=tmp, verbose=False))
        target = package / built.name
        staged = package / f".{built.name}.{os.getpid()}"
        staged.write_bytes(built.read_bytes())
        os.replace(staged, target)  # a new file: a process that has the old one loaded keeps its copy
    return target


def main() -> int:
    try:
        target = build()
    except Exception as exc:
        print(f"note: the native AES-GCM helpers did not build ({type(exc).__name__}: {str(exc)[:200]}); medguard "
              "seals cells through cryptography one at a time instead (install gcc and libssl-dev to build them)",
              file=sys.stderr)
        return 0
    print(f"built {target.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
