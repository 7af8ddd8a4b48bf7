#include <stdio.h>
#include "greet.h"

int greet(const char *name, char *buf, size_t len) {
    int n = snprintf(buf, len, "hello, %s!", name);
    return (n < 0 || (size_t)n >= len) ? -1 : n;
}
