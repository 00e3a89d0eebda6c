/* A process with an io_uring instance (tests/tracking/test_blind_spots.py).
 *
 * blind_uring map|nomap: io_uring_setup(4) through syscall(2); with "map" its SQ ring is
 * mmap'ed too. Prints "ready fd=FD ring=ADDR" (ADDR 0 without the mapping), then answers
 * each line on stdin with "alive".
 */
#define _GNU_SOURCE
#include <linux/io_uring.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	struct io_uring_params p;
	memset(&p, 0, sizeof p);
	int fd = syscall(__NR_io_uring_setup, 4, &p);
	if (fd < 0) {
		perror("FAIL io_uring_setup");
		return 1;
	}
	void *ring = NULL;
	if (argc > 1 && !strcmp(argv[1], "map")) {
		size_t len = p.sq_off.array + p.sq_entries * sizeof(unsigned);
		ring = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd,
			    IORING_OFF_SQ_RING);
		if (ring == MAP_FAILED) {
			perror("FAIL mmap");
			return 1;
		}
	}
	printf("ready fd=%d ring=%#lx\n", fd, (unsigned long)ring);
	fflush(stdout);
	char line[64];
	while (fgets(line, sizeof line, stdin)) {
		printf("alive\n");
		fflush(stdout);
	}
	return 0;
}
