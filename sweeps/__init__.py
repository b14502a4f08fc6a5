"""Study core: one fine-tuning trial (train → evaluate safety and utility) and the pieces it is made of."""
