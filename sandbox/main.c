/* main.c -- fiskaly-sandbox entry point (being written by the sandbox work). */
#include <stdio.h>
int main(void)
{
    fputs("fiskaly-sandbox: not built yet\n", stderr);
    return 1;
}
