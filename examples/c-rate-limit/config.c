// A small strict JSON reader for the rate limiter's flat config object:
// {"rate": <number>, "burst": <number>, "key": "principal"|"channel"|"client",
//  "max_delay_ms": <whole number>}; unknown keys are refused (as the Rust twin).
#include "config.h"

#include <math.h>
#include <stdbool.h>
#include <string.h>

typedef struct {
    const char *s;
    size_t len, pos;
} reader_t;

static void skip_ws(reader_t *r) {
    while (r->pos < r->len) {
        char c = r->s[r->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r') break;
        r->pos++;
    }
}

static bool eat(reader_t *r, char c) {
    skip_ws(r);
    if (r->pos < r->len && r->s[r->pos] == c) {
        r->pos++;
        return true;
    }
    return false;
}

// Reads a string into buf (at most cap-1 bytes kept, NUL-terminated). Escapes
// are decoded for the ASCII ones; \uXXXX is kept only as "?" (no key or value
// this config accepts contains one, so it then fails to match, as it should).
static bool read_string(reader_t *r, char *buf, size_t cap) {
    if (!eat(r, '"')) return false;
    size_t n = 0;
    while (r->pos < r->len) {
        char c = r->s[r->pos++];
        if (c == '"') {
            buf[n < cap ? n : cap - 1] = 0;
            return n < cap;
        }
        if ((unsigned char)c < 0x20) return false;
        if (c == '\\') {
            if (r->pos >= r->len) return false;
            char e = r->s[r->pos++];
            switch (e) {
            case '"': case '\\': case '/': c = e; break;
            case 'b': c = '\b'; break;
            case 'f': c = '\f'; break;
            case 'n': c = '\n'; break;
            case 'r': c = '\r'; break;
            case 't': c = '\t'; break;
            case 'u':
                if (r->pos + 4 > r->len) return false;
                r->pos += 4;
                c = '?';
                break;
            default: return false;
            }
        }
        if (n + 1 < cap) buf[n] = c;
        n++;
    }
    return false;
}

// A JSON number (strict grammar). Converted here rather than by strtod, whose
// wasi-libc build reads through stdio and so would import WASI file functions;
// config values need no correctly rounded last bit.
static bool read_number(reader_t *r, double *out) {
    skip_ws(r);
    const char *s = r->s;
    size_t p = r->pos;
    bool neg = false;
    double v = 0.0;
    int exp10 = 0;
    if (p < r->len && s[p] == '-') {
        neg = true;
        p++;
    }
    if (p >= r->len) return false;
    if (s[p] == '0') {
        p++;
    } else if (s[p] >= '1' && s[p] <= '9') {
        while (p < r->len && s[p] >= '0' && s[p] <= '9') v = v * 10.0 + (s[p++] - '0');
    } else {
        return false;
    }
    if (p < r->len && s[p] == '.') {
        p++;
        size_t d = p;
        while (p < r->len && s[p] >= '0' && s[p] <= '9') {
            v = v * 10.0 + (s[p++] - '0');
            exp10--;
        }
        if (p == d) return false;
    }
    if (p < r->len && (s[p] == 'e' || s[p] == 'E')) {
        p++;
        bool eneg = false;
        if (p < r->len && (s[p] == '+' || s[p] == '-')) eneg = s[p++] == '-';
        size_t d = p;
        int e = 0;
        while (p < r->len && s[p] >= '0' && s[p] <= '9') {
            if (e < 100000) e = e * 10 + (s[p] - '0');
            p++;
        }
        if (p == d) return false;
        exp10 += eneg ? -e : e;
    }
    if (exp10 > 0) {
        v *= pow(10.0, exp10);
    } else if (exp10 < 0) {
        v /= pow(10.0, -exp10);
    }
    *out = neg ? -v : v;
    r->pos = p;
    return true;
}

static bool read_null(reader_t *r) {
    skip_ws(r);
    if (r->len - r->pos >= 4 && memcmp(r->s + r->pos, "null", 4) == 0) {
        r->pos += 4;
        return true;
    }
    return false;
}

const char *rl_parse_config(const char *json, size_t len, rl_config_t *out) {
    reader_t r = {json, len, 0};
    bool have_rate = false, have_burst = false;
    double rate = 10.0, burst = 0.0;
    key_by_t key = KEY_PRINCIPAL;
    uint64_t max_delay_ms = 0;

    skip_ws(&r);
    if (r.pos == r.len) goto done; // empty config = defaults
    if (!eat(&r, '{')) return "config must be a JSON object";
    if (!eat(&r, '}')) {
        do {
            char name[32];
            if (!read_string(&r, name, sizeof name)) return "bad key in config";
            if (!eat(&r, ':')) return "expected ':' in config";
            if (strcmp(name, "rate") == 0) {
                if (!read_number(&r, &rate)) return "rate must be a number";
                have_rate = true;
            } else if (strcmp(name, "burst") == 0) {
                if (read_null(&r)) {
                    have_burst = false;
                } else if (read_number(&r, &burst)) {
                    have_burst = true;
                } else {
                    return "burst must be a number";
                }
            } else if (strcmp(name, "key") == 0) {
                char v[16];
                if (!read_string(&r, v, sizeof v)) return "key must be \"principal\", \"channel\" or \"client\"";
                if (strcmp(v, "principal") == 0) key = KEY_PRINCIPAL;
                else if (strcmp(v, "channel") == 0) key = KEY_CHANNEL;
                else if (strcmp(v, "client") == 0) key = KEY_CLIENT;
                else return "key must be \"principal\", \"channel\" or \"client\"";
            } else if (strcmp(name, "max_delay_ms") == 0) {
                double d;
                if (!read_number(&r, &d) || d < 0 || d != floor(d) || d > 1.8e19)
                    return "max_delay_ms must be a whole number of milliseconds";
                max_delay_ms = (uint64_t)d;
            } else {
                return "unknown field in config (rate, burst, key, max_delay_ms)";
            }
        } while (eat(&r, ','));
        if (!eat(&r, '}')) return "expected ',' or '}' in config";
    }
    skip_ws(&r);
    if (r.pos != r.len) return "trailing characters after the config object";
done:
    (void)have_rate;
    if (!have_burst) burst = rate > 1.0 ? rate : 1.0;
    if (!(isfinite(rate) && rate > 0.0)) return "rate must be a positive number";
    if (!(isfinite(burst) && burst >= 1.0)) return "burst must be at least 1";
    out->rate = rate;
    out->burst = burst;
    out->key = key;
    out->max_delay_ms = max_delay_ms;
    return NULL;
}
