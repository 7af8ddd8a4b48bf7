#include <stdio.h>
#include <sys/utsname.h>
#include "greet.h"

int main(int argc, char **argv) {
    char buf[64];
    struct utsname u;
    if (greet(argc > 1 ? argv[1] : "world", buf, sizeof buf) < 0) {
        fprintf(stderr, "name too long\n");
        return 2;
    }
    puts(buf);
    if (uname(&u) == 0)
        printf("built and run on %s %s (%s)\n", u.sysname, u.release, u.nodename);
    return 0;
}
