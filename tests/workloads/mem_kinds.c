/* Memory of every kind a dump policy must tell apart, then waits on stdin.
 * Prints "ready A Z F S" (addresses): A = 64 private anonymous pages, every other one written;
 * Z = 16 pages only read (they map the zero page); F = a private mapping of this binary
 * with its page 1 written (one COW copy); S = 16 shared anonymous pages, all written. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	long pg = 4096;
	volatile char sink = 0;
	char *a = mmap(0, 64 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	char *z = mmap(0, 16 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	int fd = open("/proc/self/exe", O_RDONLY);
	char *f = mmap(0, 2 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
	char *s = mmap(0, 16 * pg, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	for (int i = 0; i < 64; i += 2)
		a[i * pg] = 1 + i;
	for (int i = 0; i < 16; i++)
		sink += z[i * pg];
	sink += f[0];
	f[pg] = 42;
	for (int i = 0; i < 16; i++)
		s[i * pg] = 7;
	setvbuf(stdout, 0, _IOLBF, 0);
	printf("ready %p %p %p %p\n", a, z, f, s);
	char line[64];
	while (fgets(line, sizeof line, stdin))
		;
	return sink == 99;
}
